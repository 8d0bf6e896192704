"""A damaged database is never served as an empty one, and job ids never come back or meet old run dirs."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db import DatabaseDamaged
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A throwaway data dir (SQLite file + runs/); no scheduler, so nothing starts meanwhile."""
    return Settings(data_dir=tmp_path / "data", scheduler_enabled=False)


def _submit(client: TestClient, name: str) -> int:
    r = client.post("/api/jobs", json={"name": name, "training": {"max_steps": 5}})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _db_file(settings: Settings) -> Path:
    return settings.data_dir / "tuneboard.db"


def _write_noise_over_pages(db: Path, first: int, count: int) -> None:
    """Write random bytes over `count` pages from page `first` (1-based), the WAL folded in first."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        assert int(conn.execute("PRAGMA page_count").fetchone()[0]) >= first + count - 1
    with db.open("r+b") as fh:
        fh.seek((first - 1) * page_size)
        fh.write(random.Random(1234).randbytes(count * page_size))


def _corrupt_pages_2_to_4(db: Path) -> None:
    """The damage of the report: random bytes over pages 2-4."""
    _write_noise_over_pages(db, 2, 3)


def _corrupt_the_job_table(db: Path) -> None:
    """Random bytes over the root page of the job table."""
    with closing(sqlite3.connect(db)) as conn:
        root = int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'job'").fetchone()[0])
    _write_noise_over_pages(db, root, 1)


def test_a_damaged_database_keeps_the_app_from_starting_and_says_how_to_recover(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        for n in range(3):
            _submit(client, f"job {n}")
    _corrupt_pages_2_to_4(_db_file(settings))

    with pytest.raises(DatabaseDamaged) as refused:
        with TestClient(create_app(settings)) as client:
            pytest.fail(f"the app started on a damaged database; it lists {client.get('/api/jobs').json()}")

    message = str(refused.value)
    assert str(_db_file(settings)) in message
    assert "restore a backup" in message
    assert "runs/ are kept" in message


def test_health_answers_503_naming_the_damage_when_the_database_breaks_while_the_app_runs(
    settings: Settings,
) -> None:
    with TestClient(create_app(settings)) as client:
        _submit(client, "before")
        assert client.get("/api/health").json()["db"] == "ok"
        _corrupt_the_job_table(_db_file(settings))
        client.app.state.engine.dispose()  # type: ignore[attr-defined]  # connections that cached no page

        r = client.get("/api/health")

    assert r.status_code == 503, r.text
    assert r.json()["ok"] is False
    assert r.json()["db"].startswith("damaged: "), r.json()


def test_a_new_database_hands_out_ids_above_every_run_directory_on_disk(settings: Settings) -> None:
    # a data dir whose database was lost (or replaced) while its run directories stayed
    (settings.runs_dir / "job-3").mkdir(parents=True)  # named the old way
    (settings.runs_dir / "job-12-0a1b2c3d4e5f").mkdir()
    (settings.runs_dir / "notes-99").mkdir()  # not a run directory

    with TestClient(create_app(settings)) as client:
        first = _submit(client, "first")
        second = _submit(client, "second")

    assert (first, second) == (13, 14)


def test_an_existing_database_keeps_counting_from_its_own_ids(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ids = [_submit(client, f"job {n}") for n in range(3)]
    (settings.runs_dir / "job-2-0a1b2c3d4e5f").mkdir()  # below what the database already handed out

    with TestClient(create_app(settings)) as client:
        assert _submit(client, "next") == ids[-1] + 1


def test_the_id_of_the_newest_job_is_not_handed_out_again_once_its_row_is_gone(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        newest = max(_submit(client, f"job {n}") for n in range(2))
    with closing(sqlite3.connect(_db_file(settings))) as conn, conn:
        conn.execute("DELETE FROM job WHERE id = ?", (newest,))

    with TestClient(create_app(settings)) as client:
        assert _submit(client, "after") == newest + 1


def test_the_autoincrement_migration_keeps_every_job_metric_and_event(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    upgrade(url, "0002")
    when = "2026-01-01"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO job (id, name, status, config_text, config, model_name, priority, gpus_requested, "
            "launcher, attempt, created_at, updated_at, last_seq, last_step, parent_job_id) "
            "VALUES (?, ?, ?, '', '{}', 'm', 0, 0, 'local', 1, ?, ?, 0, 0, ?)",
            [(5, "a", "succeeded", when, when, None), (6, "b", "queued", when, when, 5)],
        )
        conn.execute("INSERT INTO metric (job_id, key, step, value, ts) VALUES (5, 'loss', 9, 0.5, 1.0)")
        conn.execute(
            "INSERT INTO job_event (job_id, seq, step, kind, payload, ts) VALUES (5, 2, 9, 'log', '{}', 1)"
        )

    upgrade(url)

    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT id, parent_job_id FROM job ORDER BY id").fetchall() == [(5, None), (6, 5)]
        assert conn.execute("SELECT job_id, key, step, value FROM metric").fetchall() == [(5, "loss", 9, 0.5)]
        assert conn.execute("SELECT job_id, seq FROM job_event").fetchall() == [(5, 2)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'job'").fetchone()[0]
        assert "AUTOINCREMENT" in schema
