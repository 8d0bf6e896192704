"""Scheduler test fixtures: fake GPU slots "0,1", the fake trainer as the worker module, short timeouts.

The parent conftest's `session_factory` (a migrated SQLite file) picks up these settings.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.models import Job
from app.scheduler.gpus import discover_slots
from app.scheduler.local import LocalLauncher
from app.scheduler.supervisor import Supervisor
from app.settings import Settings
from contract.config import JobConfig
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]
FAKE_TRAINER = "tests.fakes.fake_trainer"


def unused_port() -> int:
    """A loopback port nothing listens on, so a fake worker's reports go nowhere unless we serve there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distinct_unused_ports(count: int) -> list[int]:
    """`count` different loopback ports nothing listens on (sockets held open together while choosing, so
    the kernel cannot hand the same port out twice, as separate unused_port() calls may)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Two fake GPUs and one CPU slot; the fake trainer as worker; a 1 s cancel grace."""
    # the child runs `python -m tests.fakes.fake_trainer`: it must find this checkout's tests/ package
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), inherited) if p))
    return Settings(
        data_dir=tmp_path / "data",
        port=unused_port(),
        scheduler_enabled=False,
        gpu_slots="0,1",
        cpu_slots=1,
        worker_module=FAKE_TRAINER,
        scheduler_interval_s=0.05,
        cancel_grace_s=1.0,
        heartbeat_timeout_s=60.0,
    )


@pytest.fixture
def supervisor(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Supervisor]:
    """A supervisor on the test database; kills whatever it still owns afterwards."""
    launcher = LocalLauncher(worker_module=settings.worker_module)
    sup = Supervisor(
        settings=settings, session_factory=session_factory, launcher=launcher, slots=discover_slots(settings)
    )
    yield sup
    kill_owned(sup)


@pytest.fixture
def restarted(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Supervisor]:
    """A second supervisor, as a restarted app builds it (it owns nothing until reconciliation)."""
    sup = Supervisor(
        settings=settings,
        session_factory=session_factory,
        launcher=LocalLauncher(worker_module=settings.worker_module),
        slots=discover_slots(settings),
    )
    yield sup
    kill_owned(sup)


def kill_owned(sup: Supervisor) -> None:
    """SIGKILL and reap every process `sup` still watches (test hygiene)."""
    for job_id in sup.owned_job_ids():
        item = sup._tracked[job_id]
        sup.launcher.kill(item.handle)
        native = item.handle.native
        if hasattr(native, "wait"):
            native.wait(timeout=10)


class Kit:
    """Helpers for scheduler tests, bound to one database and one supervisor (a fixture: `kit`)."""

    def __init__(self, factory: sessionmaker[Session], supervisor: Supervisor) -> None:
        self.factory = factory
        self.supervisor = supervisor

    def queue(
        self,
        name: str = "sleep=0.3",
        *,
        gpus: int = 0,
        priority: int = 0,
        max_runtime_minutes: float | None = None,
    ) -> int:
        """Queue a job whose config name tells the fake trainer what to do; return its id."""
        config = JobConfig.model_validate(
            {
                "name": name,
                "resources": {"gpus": gpus, "priority": priority, "max_runtime_minutes": max_runtime_minutes},
            }
        )
        with self.factory() as session:
            job = service.create_job(session, config=config, config_text=f"name: {name}\n")
            session.commit()
            return job.id

    def job(self, job_id: int) -> Job:
        """A fresh copy of the job row."""
        with self.factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def env(self, job_id: int) -> dict[str, Any]:
        """What the fake trainer recorded about its own process (pid, argv, CUDA_VISIBLE_DEVICES)."""
        run_dir = self.job(job_id).run_dir
        assert run_dir is not None
        path = Path(run_dir) / "fake-env.json"

        def recorded() -> dict[str, Any] | None:
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except (OSError, ValueError):  # not written yet, or caught mid-write
                return None

        found = wait_until(
            recorded,
            10,
            f"the fake trainer of job {job_id} to write {path}",
            interval=0.02,
            until=lambda data: data is not None,
        )
        assert found is not None
        return found

    def tick_until(
        self,
        done: Callable[[], bool],
        *,
        timeout: float = 15.0,
        sup: Supervisor | None = None,
        what: str = "the condition",
    ) -> None:
        """Tick the supervisor until `done()` holds; fail with its snapshot after `timeout` seconds."""
        ticking = sup or self.supervisor

        def tick() -> dict[str, Any] | None:
            ticking.tick()
            return None if done() else ticking.snapshot()  # the scheduler's view, shown on a timeout

        wait_until(
            tick,
            timeout,
            f"{what} while ticking the supervisor, whose snapshot follows",
            until=lambda snapshot: snapshot is None,
        )

    def wait_status(
        self, job_id: int, *statuses: str, timeout: float = 15.0, sup: Supervisor | None = None
    ) -> Job:
        """Tick until the job reaches one of `statuses`; return the row."""
        self.tick_until(
            lambda: self.job(job_id).status in statuses,
            timeout=timeout,
            sup=sup,
            what=f"job {job_id} to reach {' or '.join(map(str, statuses))}",
        )
        return self.job(job_id)

    def set(self, job_id: int, **values: Any) -> None:
        """Write columns directly (to stage states the app would reach through other paths)."""
        with self.factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            for key, value in values.items():
                setattr(job, key, value)
            session.commit()


@pytest.fixture
def kit(session_factory: sessionmaker[Session], supervisor: Supervisor) -> Kit:
    """Scheduler test helpers on the migrated test database."""
    return Kit(session_factory, supervisor)
