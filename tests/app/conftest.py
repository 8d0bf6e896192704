"""Fixtures for app tests: a migrated SQLite file in a temp data dir, a TestClient, a live uvicorn server."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory
from app.jobs import service
from app.jobs.status import JobStatus
from app.main import create_app
from app.migrate import upgrade
from app.models import Job
from app.settings import Settings
from contract.config import JobConfig
from tests.waiting import wait_until

# Set to a PostgreSQL URL whose role may CREATE DATABASE to run the app tests on PostgreSQL instead of
# SQLite (each test gets a database of its own), e.g.
#   TUNEBOARD_TEST_POSTGRES_URL=postgresql+psycopg://tuneboard@/postgres?host=PG_SOCKET_DIR&port=5432
POSTGRES_URL = os.environ.get("TUNEBOARD_TEST_POSTGRES_URL")


@contextmanager
def scratch_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"tuneboard_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str | None]:
    """None (SQLite in the data dir) unless TUNEBOARD_TEST_POSTGRES_URL asks for PostgreSQL."""
    if POSTGRES_URL is None:
        yield None
        return
    with scratch_postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Settings for a throwaway data dir, scheduler off, fast SSE batches."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        scheduler_enabled=False,
        sse_batch_interval_s=0.05,
        sse_ping_interval_s=0.5,
    )


@pytest.fixture
def session_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on a freshly migrated SQLite file (the same file the app fixtures use)."""
    upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """An app built with the test settings (its lifespan migrates the database)."""
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient with the lifespan running."""
    with TestClient(app) as c:
        yield c


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A real uvicorn serving the app on loopback."""

    url: str
    app: FastAPI
    settings: Settings


@contextmanager
def serving(app: FastAPI, port: int, **config: Any) -> Iterator[None]:
    """uvicorn serving `app` on loopback `port` from a thread, started before the block runs and stopped
    (its streams closed) after it; `config` goes to uvicorn.Config."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the test uvicorn server stopped before it started")
        return bool(server.started)

    try:
        wait_until(started, 30, "the test uvicorn server to start", interval=0.02)
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def live_server(app: FastAPI, settings: Settings) -> Iterator[LiveServer]:
    """uvicorn in a thread on a free loopback port; stopped (and its streams closed) after the test."""
    port = free_port()
    settings.port = port  # workers the scheduler launches report to settings.app_url
    with serving(app, port, lifespan="on"):
        yield LiveServer(url=f"http://127.0.0.1:{port}", app=app, settings=settings)


def wait_job(client: httpx.Client, job_id: int, statuses: set[str], timeout: float) -> dict[str, Any]:
    """Poll the jobs API until the job reaches one of `statuses`; return it (a failure shows the last)."""
    job: dict[str, Any] = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}").json(),
        timeout,
        f"job {job_id} to reach {' or '.join(sorted(statuses))}",
        interval=0.1,
        until=lambda j: j["status"] in statuses,
    )
    return job


def make_started_job(
    factory: sessionmaker[Session], *, token: str = "test-token", run_dir: Path | None = None, name: str = "t"
) -> int:
    """A job moved to `starting` with a known worker token, as the scheduler would leave it."""
    with factory() as session:
        job = service.create_job(
            session, config=JobConfig.model_validate({"name": name}), config_text=f"name: {name}\n"
        )
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.token_hash = hashlib.sha256(token.encode()).hexdigest()
        job.run_dir = str(run_dir) if run_dir is not None else None
        job.attempt = 1
        session.commit()
        return job.id


def set_status(
    factory: sessionmaker[Session], job_id: int, status: JobStatus, reason: str | None = None
) -> None:
    """Move a job through the real transition function (as the supervisor does)."""
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        service.transition(session, job=job, to=status, reason=reason)
        session.commit()


def metric_event(seq: int, step: int, **values: float | str) -> dict[str, object]:
    """A worker metric event."""
    return {"seq": seq, "kind": "metric", "step": step, "ts": 1_700_000_000.0 + seq, "payload": values}


@pytest.fixture
def started_job(session_factory: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    """Factory fixture: started_job(token=..., run_dir=...) → id of a `starting` job with that token."""

    def make(*, token: str = "test-token", run_dir: Path | None = None, name: str = "t") -> int:
        return make_started_job(session_factory, token=token, run_dir=run_dir, name=name)

    return make


@pytest.fixture
def move_job(session_factory: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    """Factory fixture: move_job(job_id, JobStatus.X, reason=None) through the real transition function."""

    def move(job_id: int, status: JobStatus, reason: str | None = None) -> None:
        set_status(session_factory, job_id, status, reason)

    return move
