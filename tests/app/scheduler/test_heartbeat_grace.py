"""The heartbeat judge notices when the app itself was away (stopped, suspended, its loop blocked) and
measures heartbeats only from when it came back, so a healthy worker is never killed for the app's silence.

The supervisor's clock is injected: "the app was stopped for 20 s" is a jump of that clock between two
ticks. The worker is a real fake-trainer process; its heartbeats are written the way ingest writes them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.scheduler.gpus import discover_slots
from app.scheduler.local import LocalLauncher
from app.scheduler.supervisor import Supervisor
from app.settings import Settings

from .conftest import Kit, kill_owned

DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class SteppedClock:
    """time.time() plus an offset a test moves forward: the app's wall clock across a pause."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def paused_kit(settings: Settings, session_factory: sessionmaker[Session], clock: SteppedClock):  # type: ignore[no-untyped-def]
    settings.heartbeat_timeout_s = 5.0
    settings.app_pause_threshold_s = 2.0
    sup = Supervisor(
        settings=settings,
        session_factory=session_factory,
        launcher=LocalLauncher(worker_module=settings.worker_module),
        slots=discover_slots(settings),
        clock=clock,
    )
    yield Kit(session_factory, sup)
    kill_owned(sup)


def _heartbeat_now(kit: Kit, job_id: int, clock: SteppedClock) -> None:
    kit.set(job_id, heartbeat_at=datetime.fromtimestamp(clock(), UTC))


def test_a_worker_is_not_judged_hung_for_the_time_the_app_itself_was_stopped(
    paused_kit: Kit, clock: SteppedClock
) -> None:
    kit = paused_kit
    job_id = kit.queue("sleep=60")
    kit.wait_status(job_id, JobStatus.STARTING, JobStatus.RUNNING)
    _heartbeat_now(kit, job_id, clock)
    kit.supervisor.tick()

    clock.offset += 20.0  # the app was SIGSTOPped for 20 s, four heartbeat timeouts
    kit.supervisor.tick()

    assert kit.job(job_id).status not in DONE
    assert kit.supervisor.snapshot()["jobs"][0]["stopping"] is None, "a live worker was stopped as hung"
    assert kit.supervisor.snapshot()["resumed_at"] is not None  # health says the app noticed its absence


def test_a_worker_that_stays_silent_after_the_app_came_back_is_still_stopped_as_hung(
    paused_kit: Kit, clock: SteppedClock
) -> None:
    kit = paused_kit
    job_id = kit.queue("sleep=60")
    kit.wait_status(job_id, JobStatus.STARTING, JobStatus.RUNNING)
    _heartbeat_now(kit, job_id, clock)
    kit.supervisor.tick()
    clock.offset += 20.0
    kit.supervisor.tick()

    # back at a normal cadence: each tick 1 s later (below the pause threshold), no heartbeat arrives
    for _ in range(7):
        clock.offset += 1.0
        kit.supervisor.tick()
    job = kit.wait_status(job_id, *DONE, timeout=15)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason is not None and job.failure_reason.startswith("no heartbeat for ")


def test_ticks_slower_than_the_interval_but_below_the_pause_threshold_do_not_hide_a_hung_worker(
    paused_kit: Kit, clock: SteppedClock
) -> None:
    kit = paused_kit
    job_id = kit.queue("sleep=60")
    kit.wait_status(job_id, JobStatus.STARTING, JobStatus.RUNNING)
    _heartbeat_now(kit, job_id, clock)
    for _ in range(4):
        clock.offset += 1.9  # slow ticks (a busy database), each just under the threshold
        kit.supervisor.tick()
    job = kit.wait_status(job_id, *DONE, timeout=15)
    assert job.status == JobStatus.FAILED
    assert kit.supervisor.snapshot()["resumed_at"] is None
