"""Engine and sessions; the database's health (integrity at start-up, a real read for /api/health).

SQLite gets WAL, a busy timeout and foreign keys on every connection.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# More pooled connections than can be wanted at once: the request/stream threadpool's 40 threads, the
# request sessions app.deps admits (16), the scheduler's few threads. A thread waiting for a connection
# holds its pool thread meanwhile, while a request holding a connection needs a pool thread (answer
# serialization) to give it back: with fewer connections, 100 live streams deadlocked the app.
POOL_SIZE = 10
POOL_OVERFLOW = 60


def make_engine(url: str) -> Engine:
    """Create the engine for `url`; SQLite connections get the PRAGMAs Tuneboard relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # let SQLAlchemy's BEGIN decide transactions (needed for BEGIN IMMEDIATE claims)
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "BEGIN")
            conn.exec_driver_sql(mode)

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def immediate_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (BEGIN IMMEDIATE on SQLite).

    A deferred transaction that reads then writes fails at once with "database is locked" under
    contention; claiming work must lock first. On PostgreSQL this is a plain transaction (use
    SELECT ... FOR UPDATE SKIP LOCKED there).
    """
    session = factory()
    try:
        if session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- the database's health ------------------------------------------------------------------------

_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes: a damaged page, a file that is no database


class DatabaseDamaged(RuntimeError):
    """The SQLite file failed its integrity check; the app does not start on it."""


class DatabaseUnavailable(RuntimeError):
    """/api/health could not read the database; `state` says how ("damaged: ..." or "unavailable: ...")."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def sqlite_integrity_problem(path: Path) -> str | None:
    """PRAGMA quick_check of the SQLite file at `path`: None when sound or not there yet, else the problem."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(path, timeout=30)) as conn:
            found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)")]
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return str(exc)
    if found == ["ok"]:
        return None
    return "; ".join(found)


def damaged_database_message(path: Path, problem: str) -> str:
    """What a user reads when the database is damaged: what was found and what to do, in that order."""
    return (
        f"The database {path} is damaged ({problem}). Tuneboard will not start on it: jobs it cannot read "
        "would vanish and new jobs would take their ids. Stop here and restore a backup of that file "
        "(remove a -wal/-shm file next to it that does not belong to the backup). To salvage rows, "
        f"`sqlite3 {path.name} .recover | sqlite3 recovered.db`; to start over with an empty database, move "
        "the damaged file aside: run directories under runs/ are kept, and new job ids start above them."
    )


def check_sqlite_integrity(path: Path) -> None:
    """Raise DatabaseDamaged, with what to do, when the SQLite file at `path` fails PRAGMA quick_check."""
    problem = sqlite_integrity_problem(path)
    if problem is not None:
        message = damaged_database_message(path, problem)
        log.critical("%s", message)
        raise DatabaseDamaged(message)


def database_state(session: Session) -> str:
    """'ok' after a real read of the job table, else 'damaged: ...' or 'unavailable: ...' (/api/health)."""
    try:
        # `SELECT 1` touches no page of the file; these read the schema, the migration stamp and one path
        # down the job table's b-tree: cheap enough for every probe (the full check runs at start-up)
        session.execute(text("SELECT version_num FROM alembic_version")).all()
        session.execute(text("SELECT max(id) FROM job")).scalar()
    except DBAPIError as exc:
        session.rollback()
        code = getattr(exc.orig, "sqlite_errorcode", None)
        damaged = code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
        return f"{'damaged' if damaged else 'unavailable'}: {exc.orig}"
    return "ok"


# --- job ids never shared with a run directory ----------------------------------------------------

_RUN_DIR_NAME = re.compile(r"job-(\d+)(?:-[0-9a-f]+)?")


def highest_run_dir_job_id(runs_dir: Path) -> int:
    """The largest job id a directory under `runs_dir` is named after (job-N or job-N-<random>); 0 if none."""
    if not runs_dir.is_dir():
        return 0
    ids = [int(m.group(1)) for p in runs_dir.iterdir() if (m := _RUN_DIR_NAME.fullmatch(p.name))]
    return max(ids, default=0)


def keep_job_ids_above_run_dirs(engine: Engine, runs_dir: Path) -> int:
    """Move the job id counter past every run directory on disk; return that floor (0: nothing to do).

    A new, restored or migrated database starts its ids again, while runs/ keeps the directories of the
    jobs it no longer knows. Unique directory names already keep their files apart; this keeps the ids
    apart too, so job 3 on the page is never a different job than runs/job-3-... and its downloads.
    """
    floor = highest_run_dir_job_id(runs_dir)
    if floor == 0:
        return 0
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            # the job table is AUTOINCREMENT (migration 0003): the next id is above max(id, seq)
            params = {"n": floor}
            conn.execute(text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'job' AND seq < :n"), params)
            conn.execute(
                text(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'job', :n "
                    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'job')"
                ),
                params,
            )
        elif engine.dialect.name == "postgresql":
            seq = conn.execute(text("SELECT pg_get_serial_sequence('job', 'id')")).scalar()
            if seq:
                conn.execute(
                    text(
                        "SELECT setval(CAST(:seq AS regclass), :n) "
                        "WHERE COALESCE(pg_sequence_last_value(CAST(:seq AS regclass)), 0) < :n"
                    ),
                    {"seq": seq, "n": floor},
                )
        else:
            log.warning("job ids are not moved above run directories on %s", engine.dialect.name)
            return 0
    return floor
