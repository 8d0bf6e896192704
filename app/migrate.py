"""Apply Alembic migrations from code (the app's start-up, `tuneboard db upgrade`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from app.private import private_dir, private_file

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` that needs no alembic.ini (works from any working directory)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # passed as an attribute, not an ini option: ini values treat '%' specially and URLs may contain it
    cfg.attributes["database_url"] = url
    return cfg


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite `url`, or None (another database, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser()
    return None


def secure_sqlite_file(url: str) -> None:
    """Create the SQLite file (and its directory) private before SQLite does, and tighten old ones.

    SQLite gives the -wal and -shm files the mode of the database file, so making the database 0600 first
    keeps all three private; existing ones are tightened too (made before this rule, or copied in).
    """
    path = sqlite_file(url)
    if path is None:
        return
    if not path.parent.exists():
        private_dir(path.parent)
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if each == path or each.exists():
            private_file(each)


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: the newest)."""
    secure_sqlite_file(url)
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
