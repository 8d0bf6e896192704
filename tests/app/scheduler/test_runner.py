"""The Scheduler runner: start/stop around the supervisor loop, snapshots, re-attach across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.scheduler.runner import Scheduler, make_launcher
from app.settings import Settings
from tests.waiting import wait_until_async

DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


async def _wait_for(what: str, check: Callable[[], object], timeout: float = 15.0) -> None:
    """Wait for `check()` yielding to the event loop, so the scheduler loop under test runs meanwhile."""
    await wait_until_async(check, timeout, what)


def test_the_scheduler_runs_queued_jobs_in_the_background(
    kit, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    job_id = kit.queue("sleep=0.3", gpus=1)

    async def scenario() -> dict:  # type: ignore[type-arg]
        scheduler = Scheduler(settings, session_factory)
        await scheduler.start()
        try:
            await _wait_for(f"job {job_id} to finish", lambda: kit.job(job_id).status in DONE)
            return scheduler.snapshot()
        finally:
            await scheduler.stop()
            assert not scheduler.running

    snap = asyncio.run(scenario())
    assert kit.job(job_id).status == JobStatus.SUCCEEDED
    assert snap["running"] is True and snap["launcher"] == "local"
    assert snap["gpus"] == ["0", "1"] and snap["cpu_slots"] == 1
    assert snap["last_error"] is None


def test_stopping_leaves_training_running_and_the_next_start_reattaches_it(
    kit, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    job_id = kit.queue("sleep=2.5")

    async def first_app() -> int:
        scheduler = Scheduler(settings, session_factory)
        await scheduler.start()
        await _wait_for(f"job {job_id} to get a pid", lambda: kit.job(job_id).pid is not None)
        await scheduler.stop()
        return int(kit.job(job_id).pid or 0)

    async def second_app() -> dict:  # type: ignore[type-arg]
        scheduler = Scheduler(settings, session_factory)
        await scheduler.start()
        try:
            snap = scheduler.snapshot()
            await _wait_for(f"job {job_id} to finish", lambda: kit.job(job_id).status in DONE)
            return snap
        finally:
            await scheduler.stop()

    pid = asyncio.run(first_app())
    assert psutil.pid_exists(pid) and kit.job(job_id).status == JobStatus.STARTING  # still training
    snap = asyncio.run(second_app())
    assert snap["reconciled_at_start"] == {"reattached": 1}
    assert [(j["job_id"], j["reattached"]) for j in snap["jobs"]] == [(job_id, True)]
    assert kit.job(job_id).status == JobStatus.SUCCEEDED


def test_an_unknown_launcher_is_refused_with_the_setting_to_change(tmp_path) -> None:
    with pytest.raises(ValueError, match="TUNEBOARD_LAUNCHER=local"):
        make_launcher(Settings(data_dir=tmp_path, launcher="slurm"))


def test_a_second_scheduler_on_the_same_data_dir_stands_by_and_takes_over_when_the_first_stops(
    kit, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    async def scenario() -> tuple[str, str, str]:
        first, second = Scheduler(settings, session_factory), Scheduler(settings, session_factory)
        await first.start()
        await second.start()
        try:
            roles = (first.snapshot()["role"], second.snapshot()["role"])
            job_id = kit.queue("sleep=0")
            await _wait_for(f"job {job_id} to finish", lambda: kit.job(job_id).status in DONE)
            assert kit.job(job_id).status == JobStatus.SUCCEEDED
            assert second.supervisor.owned_job_ids() == [] and second.supervisor.last_tick_at is None
            await first.stop()
            await _wait_for("the second scheduler to take over", lambda: second.active, timeout=5)
            later = kit.queue("sleep=0")
            await _wait_for(f"job {later} to run on the second one", lambda: kit.job(later).status in DONE)
            return roles[0], roles[1], second.snapshot()["role"]
        finally:
            await first.stop()
            await second.stop()

    assert asyncio.run(scenario()) == ("active", "standby", "active")
