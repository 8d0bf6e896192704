"""The web process: create_app() wires settings, the database (migrated at start-up), routers, static."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from app.datasets.service import remove_upload_leftovers
from app.db import (
    DatabaseUnavailable,
    check_sqlite_integrity,
    keep_job_ids_above_run_dirs,
    make_engine,
    make_session_factory,
)
from app.jobs.service import JobNotFound
from app.jobs.status import TransitionError
from app.migrate import secure_sqlite_file, sqlite_file, upgrade
from app.private import private_dir
from app.settings import Settings
from contract.config import ConfigError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def start_scheduler(app: FastAPI) -> Any:
    """Start the job scheduler (app.scheduler.runner) and return it; its snapshot feeds /api/health."""
    from app.scheduler.runner import Scheduler

    scheduler = Scheduler(app.state.settings, app.state.session_factory)
    await scheduler.start()
    return scheduler


async def stop_scheduler(app: FastAPI) -> None:
    """Stop the scheduler if one runs (running jobs keep running; the next start re-attaches them)."""
    scheduler = getattr(app.state, "scheduler", None)
    if scheduler is not None:
        await scheduler.stop()
        app.state.scheduler = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Migrate the database, open the engine, start the scheduler; undo in reverse at shutdown."""
    settings: Settings = app.state.settings
    # --- auth (auth+input helper): never serve beyond loopback without a password or token ---
    from app.auth import refuse_unprotected_bind

    refuse_unprotected_bind(settings, app.state.auth_cache)
    # --- end auth ---
    for directory in (settings.data_dir, settings.runs_dir, settings.datasets_dir):
        private_dir(directory)  # 0700: configs, tokens, datasets and adapters are the owner's alone
    await anyio.to_thread.run_sync(remove_upload_leftovers, settings)  # a crash's upload-*.part, stagings
    await anyio.to_thread.run_sync(secure_sqlite_file, settings.sqlalchemy_url)
    db_file = sqlite_file(settings.sqlalchemy_url)
    if db_file is not None:
        # A damaged file otherwise serves an empty job list and hands the ids out again; refuse to start,
        # saying what to do (off the event loop: quick_check reads every page).
        await anyio.to_thread.run_sync(check_sqlite_integrity, db_file)
    # migrations are the only way the schema is made (never create_all), as in `tuneboard db upgrade`
    await anyio.to_thread.run_sync(upgrade, settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.session_factory.configure(info={"settings": settings})  # app.datasets.sources reads them
    # a new, restored or migrated database must not hand out the ids of run directories on disk
    await anyio.to_thread.run_sync(keep_job_ids_above_run_dirs, engine, settings.runs_dir)
    app.state.scheduler = None
    try:
        # --- scheduler start (scheduler helper) ---
        if settings.scheduler_enabled:
            app.state.scheduler = await start_scheduler(app)
        # --- end scheduler start ---
        yield
    finally:
        # --- scheduler stop (scheduler helper) ---
        await stop_scheduler(app)
        # --- end scheduler stop ---
        engine.dispose()


def _config_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    return JSONResponse({"detail": "invalid job config", "problems": exc.problems}, status_code=422)


def _transition_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatabaseUnavailable)
    return JSONResponse({"ok": False, "db": exc.state}, status_code=503)


DISK_FULL_MESSAGE = "the disk holding Tuneboard's data is full: free space (old runs, checkpoints) and retry"


def _disk_full(_request: Request, exc: Exception) -> JSONResponse:
    """507 with a plain message when SQLite or a file write found the disk full; anything else as before."""
    # SQLite says SQLITE_FULL as "database or disk is full" (sqlite3.OperationalError, wrapped by SQLAlchemy)
    disk_full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (
        isinstance(exc, OperationalError) and "database or disk is full" in str(exc.orig)
    )
    if not disk_full:
        raise exc
    return JSONResponse({"detail": DISK_FULL_MESSAGE}, status_code=507)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app; the database is migrated and the scheduler started in its lifespan."""
    from app.jobs.api import router as jobs_router
    from app.metrics.api import router as metrics_router

    app = FastAPI(
        title="Tuneboard",
        description="Launch, watch and compare QLoRA fine-tunes.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # app/api_docs.py serves /docs from vendored assets (FastAPI's loads a CDN)
        redoc_url=None,
    )
    app.state.settings = settings or Settings()
    app.state.scheduler = None
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(TransitionError, _transition_error)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(OperationalError, _disk_full)
    app.add_exception_handler(OSError, _disk_full)

    app.include_router(jobs_router)
    app.include_router(metrics_router)
    from app.api_docs import router as api_docs_router

    app.include_router(api_docs_router)
    # --- pages router (ui helper) ---
    from app.jobs.pages import router as pages_router

    app.include_router(pages_router)
    # --- end pages router ---
    # --- run management: rename, notes, tags, archive, delete of runs and datasets ---
    from app.datasets.delete import router as dataset_delete_router
    from app.jobs.manage_pages import router as manage_pages_router

    app.include_router(manage_pages_router)
    app.include_router(dataset_delete_router)
    # --- end run management ---
    # --- compare + sweeps (compare+sweeps helper) ---
    from app.compare.api import router as compare_api_router
    from app.compare.pages import router as compare_pages_router
    from app.sweeps.api import router as sweeps_api_router
    from app.sweeps.pages import router as sweeps_pages_router

    app.include_router(compare_api_router)
    app.include_router(sweeps_api_router)
    app.include_router(compare_pages_router)
    app.include_router(sweeps_pages_router)
    # --- end compare + sweeps ---
    # --- datasets (datasets helper) ---
    from app.datasets.api import router as datasets_api_router
    from app.datasets.pages import router as datasets_pages_router

    app.include_router(datasets_api_router)
    app.include_router(datasets_pages_router)
    # --- end datasets ---
    # --- worker artifact uploads (ray+pg+compose helper) ---
    from app.scheduler.uploads import router as uploads_router

    app.include_router(uploads_router)
    # --- end worker artifact uploads ---
    # --- takeaway: downloads, merged export, try the adapter (takeaway helper) ---
    from app.tasks.api import router as takeaway_router

    app.include_router(takeaway_router)
    # --- end takeaway ---
    # --- runtime snapshot for the fault/soak tests (faults+soak helper); 404 unless debug_endpoints ---
    from app.debug import router as debug_router

    app.include_router(debug_router)
    # --- end runtime snapshot ---
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    # --- auth (auth+input helper): login page; the middleware guards every route, mounts included ---
    from app.auth.middleware import AuthMiddleware
    from app.auth.routes import router as auth_router
    from app.auth.store import AuthCache

    app.state.auth_cache = AuthCache(app.state.settings.data_dir)
    app.include_router(auth_router)
    # body caps run inside auth: an anonymous request is refused before its size even matters
    from app.http import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware, settings=app.state.settings)
    app.add_middleware(AuthMiddleware, settings=app.state.settings, cache=app.state.auth_cache)
    # --- end auth ---
    # --- the HTTP edge (app/auth/edge.py); added last = runs first: Host check, headers on everything ---
    from app.auth.edge import HostGuardMiddleware, SecurityHeadersMiddleware

    app.add_middleware(HostGuardMiddleware, settings=app.state.settings)
    app.add_middleware(SecurityHeadersMiddleware)
    # --- end HTTP edge ---
    return app
