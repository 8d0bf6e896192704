"""The upload cap holds while the bytes stream in, through a real uvicorn; nothing of a refused or
abandoned upload stays on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.app.conftest import LiveServer
from tests.waiting import wait_until

CAP = 4096
LINE = (json.dumps({"text": "x" * 1000}) + "\n").encode()
BOUNDARY = "tuneboard-test-boundary"
HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """The app fixtures' settings with a 4 KiB upload cap."""
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, scheduler_enabled=False, max_upload_bytes=CAP
    )


def _left_on_disk(settings: Settings) -> list[Path]:
    return [
        p
        for root in (settings.datasets_dir, settings.data_dir / "tmp")
        if root.exists()
        for p in root.rglob("*")
    ]


def test_an_oversized_form_upload_gets_413_and_leaves_no_file(client: TestClient, settings: Settings) -> None:
    r = client.post("/api/datasets", files={"file": ("big.jsonl", LINE * 20)})
    assert r.status_code == 413
    assert f"over the upload limit of {CAP} bytes" in r.json()["detail"]
    assert _left_on_disk(settings) == []
    assert [d for d in client.get("/api/datasets").json() if d["kind"] == "upload"] == []


def test_a_declared_length_over_the_cap_is_refused_before_reading(
    client: TestClient, settings: Settings
) -> None:
    body = HEAD + LINE * 80 + f"\r\n--{BOUNDARY}--\r\n".encode()  # past the cap plus the form overhead
    r = client.post("/api/datasets", content=body, headers=MULTIPART)
    assert r.status_code == 413
    # said by the route's own check or by the app's generic body cap in front of it, whichever is first
    assert f"{len(body)} bytes" in r.json()["detail"]
    assert _left_on_disk(settings) == []


def test_a_chunked_upload_without_a_length_is_cut_off_while_streaming(
    live_server: LiveServer, settings: Settings
) -> None:
    def body() -> Iterator[bytes]:
        # no Content-Length: the cap can only be enforced as the bytes arrive
        yield HEAD
        for _ in range(200):
            yield LINE
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    r = httpx.post(f"{live_server.url}/api/datasets", content=body(), headers=MULTIPART, timeout=30)
    assert r.status_code == 413
    # said by the route's own cap or by the app's generic body cap in front of it, whichever is first
    assert "over the" in r.json()["detail"] and "limit" in r.json()["detail"]
    assert _left_on_disk(settings) == []


def test_an_upload_abandoned_half_way_leaves_no_temp_file(
    live_server: LiveServer, settings: Settings
) -> None:
    class Abandoned(Exception):
        pass

    def body() -> Iterator[bytes]:
        yield HEAD
        yield LINE[:2000]  # under the cap: the server is still receiving when the client goes away
        wait_until(
            lambda: _left_on_disk(settings), 10, "the server to start writing the upload to a temp file"
        )
        raise Abandoned

    with pytest.raises(Abandoned):
        httpx.post(f"{live_server.url}/api/datasets", content=body(), headers=MULTIPART, timeout=30)
    wait_until(lambda: _left_on_disk(settings), 10, "the temp file to go", until=lambda left: left == [])
