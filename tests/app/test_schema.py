"""The Alembic migrations build exactly the schema app/models.py describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from app.main import create_app
from app.migrate import alembic_config, current_revision, upgrade
from app.models import Base
from app.settings import Settings


def _diff(url: str, metadata: sa.MetaData) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def _head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_migrated_database_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    diff = _diff(url, Base.metadata)
    assert diff == [], (
        "app/models.py and the migrations disagree. Write a new migration in migrations/versions/ "
        "(e.g. `alembic revision --autogenerate -m '...'`, then review it) instead of editing 0001. "
        f"Differences: {diff}"
    )


def test_the_drift_check_notices_a_column_the_migrations_lack(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    drifted = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["metric"].append_column(sa.Column("unit", sa.String(16), nullable=True))
    diff = _diff(url, drifted)
    assert any(op[0] == "add_column" and op[3].name == "unit" for op in diff if isinstance(op, tuple))


def test_metric_and_event_tables_are_without_rowid(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        sql = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
    engine.dispose()
    assert "WITHOUT ROWID" in sql["metric"]
    assert "WITHOUT ROWID" in sql["job_event"]
    assert "ck_job_status" in sql["job"]


def test_downgrade_to_base_and_upgrade_again_round_trips(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert current_revision(url) == _head()


def test_app_start_up_migrates_an_empty_data_dir_to_head(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh", scheduler_enabled=False)
    assert not (tmp_path / "fresh").exists()
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").json()["db"] == "ok"
    assert current_revision(settings.sqlalchemy_url) == _head()


def test_the_migrations_render_for_postgresql() -> None:
    import io

    from alembic import command

    cfg = alembic_config("postgresql://tuneboard@localhost/tuneboard")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)  # offline: renders SQL without a server
    sql = cfg.output_buffer.getvalue()
    assert "CREATE TABLE metric" in sql and "PRIMARY KEY (job_id, key, step)" in sql
    assert "WITHOUT ROWID" not in sql  # a SQLite-only option must not leak into PostgreSQL DDL


def test_a_migrated_postgresql_database_matches_the_models(database_url: str | None) -> None:
    if database_url is None:
        pytest.skip("PostgreSQL run only: set TUNEBOARD_TEST_POSTGRES_URL (a role that may CREATE DATABASE)")
    upgrade(database_url)
    diff = _diff(database_url, Base.metadata)
    assert diff == [], (
        f"PostgreSQL schema and app/models.py disagree; write a new migration. Differences: {diff}"
    )
