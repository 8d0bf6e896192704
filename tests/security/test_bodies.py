"""Bodies are judged before they are read: every route has a size cap, enforced on the declared length
(413 without reading a byte) and on the bytes as they stream in (chunked bodies stop at the cap)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth.store import set_password
from app.main import create_app
from app.settings import Settings

CHUNK = 64 * 1024


class Upload:
    """An ASGI receive() that hands out `total` bytes in CHUNK pieces and counts what was taken."""

    def __init__(self, total: int, filler: bytes = b" ") -> None:
        self.total = total
        self.taken = 0
        self.filler = filler

    async def __call__(self) -> dict[str, Any]:
        if self.taken >= self.total:
            await anyio.sleep(3600)  # a client that sent everything waits for the answer
        size = min(CHUNK, self.total - self.taken)
        self.taken += size
        return {"type": "http.request", "body": self.filler * size, "more_body": self.taken < self.total}


def call(app: FastAPI, method: str, path: str, receive: Upload, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send one request straight into the ASGI app (no lifespan); (status, body) of its answer."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        with anyio.fail_after(30):
            await app(scope, receive, send)

    anyio.run(main)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


@pytest.fixture
def local_app(settings: Settings) -> FastAPI:
    """The default dashboard: loopback, no password."""
    return create_app(settings)


def test_a_declared_oversized_estimate_is_refused_without_reading_it(
    local_app: FastAPI, settings: Settings
) -> None:
    upload = Upload(settings.max_config_bytes * 4)
    headers = {"content-type": "application/json", "content-length": str(upload.total)}
    status, body = call(local_app, "POST", "/api/estimate", upload, headers)
    assert status == 413
    assert str(settings.max_config_bytes) in json.loads(body)["detail"]
    assert upload.taken == 0


def test_a_chunked_estimate_without_a_length_stops_at_the_cap(local_app: FastAPI, settings: Settings) -> None:
    upload = Upload(settings.max_config_bytes * 8)
    status, _body = call(local_app, "POST", "/api/estimate", upload, {"content-type": "application/json"})
    assert status == 413
    assert upload.taken <= settings.max_config_bytes + CHUNK


def test_an_estimate_within_the_cap_still_answers(client: TestClient) -> None:
    config = client.get("/api/presets").json()["demo"]
    response = client.post("/api/estimate", json=config)
    assert response.status_code == 200
    assert response.json()["total_gb"] > 0


def test_the_login_body_is_capped_before_it_is_parsed(settings: Settings) -> None:
    settings.host = "0.0.0.0"
    set_password(settings.data_dir, "correct horse battery")
    app = create_app(settings)
    upload = Upload(800 * 1024 * 1024)  # the 800 MB multipart body that was spooled to disk before the 401
    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": str(upload.total)}
    status, _ = call(app, "POST", "/login", upload, headers)
    assert status == 413 and upload.taken == 0
    chunked = Upload(upload.total)
    status, _ = call(app, "POST", "/login", chunked, {"content-type": "multipart/form-data; boundary=x"})
    assert status == 413
    assert chunked.taken <= 16 * 1024 + CHUNK


def test_other_api_routes_get_a_default_cap(local_app: FastAPI) -> None:
    upload = Upload(2 * 1024 * 1024)
    headers = {"content-type": "application/json", "content-length": str(upload.total)}
    status, _ = call(local_app, "POST", "/api/jobs/1/cancel", upload, headers)
    assert status == 413 and upload.taken == 0


@pytest.mark.parametrize(
    ("method", "path", "cap"),
    [
        ("PUT", "/api/jobs/1/artifacts/adapter/adapter_model.safetensors", "max_artifact_bytes"),
        ("POST", "/api/datasets", "max_upload_bytes"),
        ("POST", "/datasets", "max_upload_bytes"),
    ],
)
def test_worker_and_upload_routes_are_capped_by_their_own_setting(
    settings: Settings, method: str, path: str, cap: str
) -> None:
    setattr(settings, cap, 3 * 1024 * 1024)
    app = create_app(settings)
    too_big = Upload(8 * 1024 * 1024)
    status, _ = call(app, method, path, too_big, {"content-length": str(too_big.total)})
    assert status == 413 and too_big.taken == 0


def test_an_upload_larger_than_the_default_cap_is_accepted(client: TestClient, settings: Settings) -> None:
    row = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    text = "\n".join([row] * (2 * 1024 * 1024 // len(row) + 1)) + "\n"
    assert 2 * 1024 * 1024 < len(text) < settings.max_upload_bytes
    response = client.post("/api/datasets", files={"file": ("big.jsonl", text.encode(), "application/jsonl")})
    assert response.status_code in (200, 201), response.text


def test_the_ingest_route_is_capped_by_the_batch_size(settings: Settings) -> None:
    settings.max_events_per_batch = 10
    app = create_app(settings)
    upload = Upload(10 * 1024 * 1024)
    headers = {"content-type": "application/json", "content-length": str(upload.total)}
    status, _ = call(app, "POST", "/api/jobs/1/events", upload, headers)
    assert status == 413 and upload.taken == 0
