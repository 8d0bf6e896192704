"""The database and its -wal and -shm are the owner's alone (0600); the data, runs and datasets dirs 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A throwaway data dir; no scheduler."""
    return Settings(data_dir=tmp_path / "data", scheduler_enabled=False)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common default umask, under which files are made 0644 and directories 0755 unless chosen."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_and_shm_files_are_readable_by_the_owner_only(settings: Settings) -> None:
    db = settings.data_dir / "tuneboard.db"
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/jobs", json={"name": "x"}).status_code == 201
        files = (db, db.with_name("tuneboard.db-wal"), db.with_name("tuneboard.db-shm"))
        modes = {p.name: _mode(p) for p in files}
    assert modes == {"tuneboard.db": 0o600, "tuneboard.db-wal": 0o600, "tuneboard.db-shm": 0o600}


def test_the_data_runs_and_datasets_directories_are_private_from_the_first_start(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        pass
    dirs = (settings.data_dir, settings.runs_dir, settings.datasets_dir)
    assert {str(d): _mode(d) for d in dirs} == {str(d): 0o700 for d in dirs}


def test_a_data_dir_made_before_this_rule_is_tightened_at_start_up(settings: Settings) -> None:
    settings.runs_dir.mkdir(parents=True, mode=0o755)
    upgrade(settings.sqlalchemy_url)
    db = settings.data_dir / "tuneboard.db"
    for path, mode in ((settings.data_dir, 0o755), (settings.runs_dir, 0o755), (db, 0o644)):
        path.chmod(mode)
    with TestClient(create_app(settings)):
        pass
    assert (_mode(settings.data_dir), _mode(settings.runs_dir), _mode(db)) == (0o700, 0o700, 0o600)
