"""Merged exports and tries are work the scheduler places: they hold slots, wait for GPUs, survive restarts.

The export is a stand-in that runs until the test creates RUN_DIR/release (tests/fakes/held_merge.py), so
an app can be stopped and started again while it lives.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.status import JobStatus
from app.main import create_app
from app.models import Job, Task
from app.scheduler.supervisor import Supervisor
from app.settings import Settings
from app.tasks.manager import TaskManager
from contract.config import JobConfig
from tests.app.scheduler.conftest import Kit
from tests.waiting import gone, wait_until

HELD_MERGE = "tests.fakes.held_merge"


def finished_job(factory: sessionmaker[Session], run_dir: Path) -> int:
    """A succeeded, unquantized job with an adapter directory: one the merged export accepts."""
    (run_dir / "adapter").mkdir(parents=True)
    config = JobConfig.model_validate({"name": "t", "quantization": {"method": "none"}})
    with factory() as session:
        job = service.create_job(session, config=config, config_text="name: t\n")
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.run_dir = str(run_dir)
        job.token_hash = hashlib.sha256(b"x").hexdigest()
        service.transition(session, job=job, to=JobStatus.SUCCEEDED)
        session.commit()
        return job.id


def app_client(settings: Settings) -> TestClient:
    """A client of a new app with its scheduler on, exporting with the held stand-in."""
    settings.scheduler_enabled = True
    app = create_app(settings)
    manager = TaskManager(settings)
    manager.merge_module = HELD_MERGE
    app.state.tasks = manager
    return TestClient(app)


def scheduled_tasks(client: TestClient) -> list[dict[str, Any]]:
    """The tasks in the scheduler's part of /api/health."""
    tasks: list[dict[str, Any]] = client.get("/api/health").json()["scheduler"]["tasks"]
    return tasks


def task_row(factory: sessionmaker[Session], job_id: int) -> Task:
    """The newest task of a job."""
    with factory() as session:
        task = session.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.id.desc())).first()
        assert task is not None
        return task


def test_a_merge_started_through_the_api_holds_its_gpu_in_the_schedulers_view(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    settings.task_gpus = "1"
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with app_client(settings) as client:
        assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 202
        tasks = wait_until(lambda: scheduled_tasks(client), 15, "the merge to show in health")
        assert [(t["job_id"], t["kind"], t["gpus"]) for t in tasks] == [(job_id, "merge", ["1"])]
        assert client.get("/api/health").json()["scheduler"]["free_gpus"] == ["0"]
        (run_dir / "release").touch()
        wait_until(
            lambda: client.get(f"/api/jobs/{job_id}/export-merged").json(),
            15,
            "the merge to succeed",
            until=lambda status: status["state"] == "succeeded",
        )
        wait_until(
            lambda: scheduled_tasks(client), 15, "the slot to come free", until=lambda tasks: tasks == []
        )
    assert task_row(session_factory, job_id).status == "succeeded"


def test_a_task_asking_for_a_gpu_waits_while_a_training_job_holds_it(
    settings: Settings,
    session_factory: sessionmaker[Session],
    supervisor: Supervisor,
    kit: Kit,
    tmp_path: Path,
) -> None:
    settings.task_gpus = "0"  # tasks may use GPU 0 only; the training job below is placed there
    training = kit.queue("sleep=30", gpus=1)
    kit.tick_until(lambda: training in supervisor.owned_job_ids())
    assert kit.job(training).assigned_gpus == "0"
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with session_factory() as session:
        session.add(
            Task(
                job_id=job_id,
                kind="merge",
                status="queued",
                module=HELD_MERGE,
                args=[],
                run_dir=str(run_dir),
                log_path=str(run_dir / "merge.log"),
                gpus_requested=1,
                timeout_s=60,
            )
        )
        session.commit()
    for _ in range(5):
        supervisor.tick()
    assert task_row(session_factory, job_id).status == "queued"  # the GPU is the training job's
    assert supervisor.snapshot()["tasks"] == []
    service_cancel(session_factory, training)
    kit.tick_until(lambda: task_row(session_factory, job_id).status == "running")
    assert [t["gpus"] for t in supervisor.snapshot()["tasks"]] == [["0"]]
    (run_dir / "release").touch()
    kit.tick_until(lambda: task_row(session_factory, job_id).status == "succeeded")


def service_cancel(factory: sessionmaker[Session], job_id: int) -> None:
    """Ask for a job's cancel, as POST /api/jobs/{id}/cancel does."""
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        service.cancel_job(session, job=job)
        session.commit()


def test_a_merge_running_across_an_app_restart_is_reattached_and_finishes(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with app_client(settings) as client:
        assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 202
        pid = wait_until(lambda: task_row(session_factory, job_id).pid, 15, "the merge to start")
    assert psutil.pid_exists(pid) and not gone(pid, timeout=0.2)  # the app stopped, the export did not
    try:
        with app_client(settings) as client:
            scheduler = client.get("/api/health").json()["scheduler"]
            assert scheduler["tasks_reconciled_at_start"] == {"reattached": 1}
            assert [(t["pid"], t["reattached"]) for t in scheduler["tasks"]] == [(pid, True)]
            assert client.get(f"/api/jobs/{job_id}/export-merged").json()["state"] == "running"
            (run_dir / "release").touch()
            done = wait_until(
                lambda: client.get(f"/api/jobs/{job_id}/export-merged").json(),
                15,
                "the re-attached merge to finish",
                until=lambda status: status["state"] != "running",
            )
            assert done["state"] == "succeeded", done
            wait_until(
                lambda: scheduled_tasks(client),
                15,
                "the scheduler to record its end",
                until=lambda t: t == [],
            )
        assert task_row(session_factory, job_id).status == "succeeded"
    finally:
        (run_dir / "release").touch()


def test_a_merge_that_died_while_the_app_was_down_is_marked_failed_with_the_reason(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with app_client(settings) as client:
        assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 202
        pid = wait_until(lambda: task_row(session_factory, job_id).pid, 15, "the merge to start")
    os.killpg(pid, signal.SIGKILL)
    assert gone(pid)
    with app_client(settings) as client:
        assert client.get("/api/health").json()["scheduler"]["tasks_reconciled_at_start"] == {"lost": 1}
        status = client.get(f"/api/jobs/{job_id}/export-merged").json()
        assert status["state"] == "failed"
        assert "ended while the app was down" in status["message"]
    task = task_row(session_factory, job_id)
    assert task.status == "failed"
    assert task.failure_reason is not None and "ended while the app was down" in task.failure_reason


ENDLESS_TRY = "tests.fakes.endless_generate"


@pytest.fixture
def scheduling(settings: Settings) -> Settings:
    """The test settings with the scheduler on and GPU 1 named for tasks (before the app is built)."""
    settings.scheduler_enabled = True
    settings.task_gpus = "1"
    return settings


def test_a_try_is_placed_by_the_scheduler_and_cancelled_when_its_client_leaves(
    scheduling: Settings, live_server: Any, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    manager = TaskManager(scheduling)
    manager.try_module = ENDLESS_TRY
    live_server.app.state.tasks = manager
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        with http.stream("GET", f"/api/jobs/{job_id}/try", params={"prompt": "hi"}) as answer:
            assert answer.status_code == 200
            lines = answer.iter_lines()  # held: a dropped iterator would close the connection here
            for line in lines:
                if line.startswith("event: token"):
                    break
            tasks = http.get("/api/health").json()["scheduler"]["tasks"]
            assert [(t["job_id"], t["kind"], t["gpus"]) for t in tasks] == [(job_id, "try", ["1"])]
            pid = tasks[0]["pid"]
        assert gone(pid), "the generation process outlived its client"
        wait_until(
            lambda: http.get("/api/health").json()["scheduler"]["tasks"],
            15,
            "the try's slot to come free",
            until=lambda tasks: tasks == [],
        )
    assert task_row(session_factory, job_id).status == "cancelled"
