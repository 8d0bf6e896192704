"""Short worker tasks are one at a time per job, and their processes die with the client or the timeout.

The generation process is a stand-in that never finishes (tests/fakes/endless_generate.py), so these
tests need no model; the real generation is covered in test_takeaway.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.status import JobStatus
from app.models import Job
from app.settings import Settings
from app.tasks.manager import NEVER_STARTED_S, TaskBusy, TaskManager, task_config
from app.tasks.merge_status import merge_status
from app.tasks.try_stream import STAGE_STARTING, STAGE_WAITING, Decoding
from contract.config import JobConfig
from contract.tasks import write_merge_status
from tests.waiting import gone, wait_until

ENDLESS = "tests.fakes.endless_generate"
STORED = task_config({})  # the job config a task is handed (the stand-in ignores it)


@pytest.fixture
def manager(settings: Settings, session_factory: sessionmaker[Session]) -> TaskManager:
    """A task manager on the migrated test database, no scheduler (it ticks its own task supervisor)."""
    manager = TaskManager(settings, session_factory)
    manager.try_module = ENDLESS
    return manager


def a_job(factory: sessionmaker[Session]) -> int:
    """A job row for tasks to belong to (the first one in a fresh database has id 1)."""
    with factory() as session:
        job = service.create_job(
            session, config=JobConfig.model_validate({"name": "t"}), config_text="name: t\n"
        )
        session.commit()
        return job.id


def test_a_job_runs_one_task_at_a_time_and_is_free_again_after_it(manager: TaskManager) -> None:
    claim = manager.claim(7, "try", 30)
    with pytest.raises(TaskBusy, match="job 7 is already running a try-the-adapter generation"):
        manager.claim(7, "merge", 30)
    manager.claim(8, "try", 30)  # other jobs are not held up...
    with pytest.raises(TaskBusy, match="TUNEBOARD_TASKS_MAX_CONCURRENT"):
        manager.claim(9, "try", 30)  # ...up to the cap over all jobs (2 by default)
    manager.release(claim)
    manager.claim(7, "merge", 30)


def test_a_consumer_that_stops_reading_kills_the_generation_process(
    manager: TaskManager, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    assert a_job(session_factory) == 1
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def main() -> int:
        claim = manager.claim(1, "try", 30)
        lines = manager.generation_lines(claim, run_dir, config=STORED, prompt="hi", decoding=Decoding(4))
        first = await lines.__anext__()
        while first is not None and "stage" in first:  # the app says what the try waits for first
            assert first["stage"] in (STAGE_WAITING, STAGE_STARTING)
            first = await lines.__anext__()
        assert first == {"side": "adapter", "token": "x"}
        assert claim.pid is not None and psutil.pid_exists(claim.pid)
        await lines.aclose()  # what a disconnected client's cancelled response does
        return claim.pid

    pid = asyncio.run(main())
    assert gone(pid)
    assert manager.running(1) is None
    assert list((tmp_path / "data" / "tmp").iterdir()) == []  # the prompt file is removed too


def test_a_generation_past_the_timeout_is_killed_and_says_so(
    manager: TaskManager, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    assert a_job(session_factory) == 1
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def main() -> tuple[list[Any], int | None]:
        claim = manager.claim(1, "try", 0.6)
        lines = manager.generation_lines(claim, run_dir, config=STORED, prompt="hi", decoding=Decoding(4))
        seen = [m async for m in lines if m is None or "stage" not in m]
        return seen, claim.pid

    seen, pid = asyncio.run(main())
    assert seen[0] == {"side": "adapter", "token": "x"}
    assert (
        "error" in seen[-1]
        and "0.6 s" in seen[-1]["error"]
        and "TUNEBOARD_TRY_TIMEOUT_S" in seen[-1]["error"]
    )
    assert pid is not None and gone(pid)


def test_an_export_whose_process_vanished_is_reported_failed_not_running_forever(tmp_path: Path) -> None:
    write_merge_status(
        tmp_path, state="running", stage="merging", progress=0.6, message="", pid=2**22 + 12345
    )
    status = merge_status(tmp_path)
    assert status["state"] == "failed" and "start it again" in status["message"]
    assert json.loads((tmp_path / "merge.json").read_text())["state"] == "failed"
    write_merge_status(tmp_path, state="starting", stage="starting", progress=0.0, message="")
    assert merge_status(tmp_path)["state"] == "starting"  # no pid yet, but just written: still starting


def succeeded_job_with_adapter(factory: sessionmaker[Session], run_dir: Path) -> int:
    """A succeeded job whose run directory has an adapter directory (the stand-in never reads it)."""
    (run_dir / "adapter").mkdir(parents=True)
    with factory() as session:
        job = service.create_job(
            session, config=JobConfig.model_validate({"name": "t"}), config_text="name: t\n"
        )
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.run_dir = str(run_dir)
        job.token_hash = hashlib.sha256(b"x").hexdigest()
        service.transition(session, job=job, to=JobStatus.SUCCEEDED)
        session.commit()
        return job.id


def test_closing_the_try_stream_over_http_kills_the_process_and_frees_the_job(
    live_server: Any, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    manager = TaskManager(live_server.settings)
    manager.try_module = ENDLESS
    live_server.app.state.tasks = manager
    run_dir = tmp_path / "run"
    job_id = succeeded_job_with_adapter(session_factory, run_dir)
    url = f"{live_server.url}/api/jobs/{job_id}/try"
    with httpx.Client(timeout=10) as http:
        with http.stream("GET", url, params={"prompt": "hello"}) as answer:
            assert answer.status_code == 200
            lines = answer.iter_lines()  # held: a dropped iterator would close the connection here
            for line in lines:
                if line.startswith("event: token"):
                    break
            busy = http.get(url, params={"prompt": "again"})
            assert busy.status_code == 409 and "already running" in busy.json()["detail"]
            pid = int((run_dir / "endless.pid").read_text())
        # the connection is closed here: the server notices and kills the process group
        assert gone(pid), "the generation process outlived its client"
        wait_until(
            lambda: manager.running(job_id),
            5,
            f"job {job_id} to be free again",
            until=lambda claim: claim is None,
        )
        assert manager.running(job_id) is None
    with session_factory() as session:
        assert session.get(Job, job_id) is not None


def test_a_claim_whose_process_never_started_is_dropped_after_a_while(manager: TaskManager) -> None:
    claim = manager.claim(3, "try", 300)  # as when a client leaves before the response body starts
    assert manager.running(3) is claim
    claim.started -= NEVER_STARTED_S + 1
    assert manager.running(3) is None
    manager.claim(3, "try", 300)
