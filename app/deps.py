"""Request dependencies: settings, one session per request (the only place that commits), job or 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

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


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: commit when the handler succeeds, roll back when it raises.

    Requests that may write take SQLite's write lock when their transaction begins (BEGIN IMMEDIATE):
    a deferred transaction that reads and then writes fails at once with "database is locked" when
    another writer got in between, whatever the busy timeout.
    """
    factory = get_session_factory(request)
    engine = request.app.state.engine
    if request.method not in _READ_ONLY_METHODS and engine.dialect.name == "sqlite":
        # the lock is taken lazily, at the first statement, not while a slow client is still uploading
        session = factory(bind=engine.execution_options(sqlite_begin="BEGIN IMMEDIATE"))
    else:
        session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


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
