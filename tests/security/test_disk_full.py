"""A submit that meets a full disk answers 507 with a plain message, not a 500 with a traceback."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.jobs import service
from app.main import create_app
from app.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A throwaway data dir; no scheduler."""
    return Settings(data_dir=tmp_path / "data", scheduler_enabled=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan; server errors become 500 answers, as a real client sees them."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _fill_the_database(client: TestClient) -> None:
    """From now on SQLite may not grow the file by one page: what a full disk looks like to it."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _no_room(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {int(pages)}")
        cur.close()


def test_a_submit_on_a_full_disk_answers_507_with_a_plain_message(client: TestClient) -> None:
    _fill_the_database(client)
    # a config text longer than a page needs new pages for its row
    body = "name: big\n" + "".join(f"# note {n}: {'x' * 70}\n" for n in range(600))

    r = client.post("/api/jobs", content=body, headers={"Content-Type": "application/yaml"})

    assert r.status_code == 507, r.text
    assert r.json() == {
        "detail": "the disk holding Tuneboard's data is full: free space (old runs, checkpoints) and retry"
    }
    assert client.get("/api/jobs").json() == []


def test_no_space_left_while_writing_a_file_answers_507(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service, "create_job", no_space)
    r = client.post("/api/jobs", json={"name": "x"})
    assert r.status_code == 507 and "disk" in r.json()["detail"]


def test_other_os_errors_still_answer_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(service, "create_job", denied)
    assert client.post("/api/jobs", json={"name": "x"}).status_code == 500
