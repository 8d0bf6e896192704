"""Request dependencies: settings, one session per request (the only place that commits), job or 404."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.service import JobNotFound, get_job
from app.models import Job
from app.settings import Settings

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The app's session factory (for code that opens short sessions itself, e.g. SSE polls)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request: commit when the handler succeeds, roll back when it raises.

    Requests that may write take SQLite's write lock when their transaction begins (BEGIN IMMEDIATE):
    a deferred transaction that reads and then writes fails at once with "database is locked" when
    another writer got in between, whatever the busy timeout.

    At most WRITE_REQUEST_SLOTS such requests run at once; the others wait here, on the event loop.
    Each writer waiting for SQLite's lock holds a thread of the shared request pool, and the lock
    holder needs one more from that pool (FastAPI serializes a sync endpoint's answer there) before its
    commit: with more waiting writers than threads, nobody could finish until the busy timeout failed
    them all with "database is locked" (50 simultaneous submissions did exactly that).
    """
    factory = get_session_factory(request)
    engine = request.app.state.engine
    gate: anyio.Semaphore | None = None
    if request.method not in _READ_ONLY_METHODS and engine.dialect.name == "sqlite":
        gate = _write_gate()
        await gate.acquire()
        # the lock is taken lazily, at the first statement, not while a slow client is still uploading
        session = factory(bind=engine.execution_options(sqlite_begin="BEGIN IMMEDIATE"))
    else:
        session = factory()
    try:
        yield session
        await _finish_session(session, commit=True)
    except BaseException:
        await _finish_session(session, commit=False)
        raise
    finally:
        if gate is not None:
            gate.release()


WRITE_REQUEST_SLOTS = 8  # well below the request threadpool's 40 threads
_WRITE_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _write_gate() -> anyio.Semaphore:
    """This event loop's semaphore for write requests (tests run several apps, each on its own loop)."""
    loop = asyncio.get_running_loop()
    gate = _WRITE_GATES.get(loop)
    if gate is None:
        gate = _WRITE_GATES[loop] = anyio.Semaphore(WRITE_REQUEST_SLOTS)
    return gate


async def _finish_session(session: Session, *, commit: bool) -> None:
    """Commit or roll back, then close, in a thread; shielded so a client's disconnect cannot skip it."""

    def finish() -> None:
        try:
            if commit:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(finish)


# scope="function": commit before the response is sent, so a client that reads right after a write sees it
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_job_or_404(job_id: int, session: SessionDep) -> Job:
    """The job named in the path, or a 404 that says so."""
    try:
        return get_job(session, job_id)
    except JobNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


JobDep = Annotated[Job, Depends(get_job_or_404)]
