"""Engine and sessions. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

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
