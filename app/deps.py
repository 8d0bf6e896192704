"""Request dependencies: settings, one session per request (the only place that commits), job or 404."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Query, Request
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

    A request holds its pooled connection across hops between threads (the endpoint, FastAPI's answer
    serialization, the commit), so without bounds the shared request threadpool (40 threads) and the
    connection pool can starve each other: writers waiting for SQLite's lock filled every thread while
    the lock holder waited for one to serialize its answer (50 simultaneous submissions: "database is
    locked"), and 100 live streams deadlocked the app outright. Hence: at most REQUEST_SESSION_SLOTS
    request sessions exist at once (the others wait here, on the event loop, holding nothing), their
    commit runs on a small pool of its own, and app.db keeps more connections than threads can want.
    """
    factory = get_session_factory(request)
    engine = request.app.state.engine
    gate = _loop_local(_SESSION_GATES, lambda: anyio.Semaphore(REQUEST_SESSION_SLOTS))
    await gate.acquire()
    try:
        if request.method not in _READ_ONLY_METHODS and engine.dialect.name == "sqlite":
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
        gate.release()


REQUEST_SESSION_SLOTS = 16  # well below the request threadpool's 40 threads
SESSION_END_THREADS = 8
_SESSION_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
_END_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _loop_local(store: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any], make: Any) -> Any:
    """One object per event loop (tests run several apps, each on a loop of its own)."""
    loop = asyncio.get_running_loop()
    found = store.get(loop)
    if found is None:
        found = store[loop] = make()
    return found


async def _finish_session(session: Session, *, commit: bool) -> None:
    """Commit or roll back, then close, on the session-end threads; shielded against disconnects."""
    limiter = _loop_local(_END_LIMITERS, lambda: anyio.CapacityLimiter(SESSION_END_THREADS))

    def finish() -> None:
        try:
            if commit:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(finish, limiter=limiter)


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

# event seq and metric step are INTEGER columns (32-bit on PostgreSQL): a cursor beyond them is a 422, never
# a database error (SQLite overflows past 64 bits). Job ids need no bound here: get_job answers 404.
INT32_MAX = 2**31 - 1
SeqCursor = Annotated[int, Query(ge=0, le=INT32_MAX, description="Only events with a larger seq.")]
StepCursor = Annotated[
    int | None, Query(ge=-1, le=INT32_MAX, description="Only metric points with a larger step.")
]
