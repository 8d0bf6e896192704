"""Engine and sessions. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """Create the engine for `url`; SQLite connections get the PRAGMAs Tuneboard relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
    return create_engine(url, pool_pre_ping=True)


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
