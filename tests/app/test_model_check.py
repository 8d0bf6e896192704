"""A hub model is checked when the job is created (app/jobs/model_check.py), against a local stand-in of the
Hub's model API started here (huggingface_hub honours its ENDPOINT) and a real Hugging Face cache layout."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import constants

from tests.app.conftest import free_port

EXISTS, MISSING, GATED = "owner/exists", "owner/missing", "owner/gated"


@pytest.fixture
def hub() -> Iterator[str]:
    """The Hub's GET /api/models/{id} for three models: one there, one missing, one gated."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body, status, headers = b"{}", 404, {"X-Error-Code": "RepoNotFound"}
            if self.path.startswith(f"/api/models/{EXISTS}"):
                body, status, headers = json.dumps({"id": EXISTS, "sha": "0" * 40}).encode(), 200, {}
            elif self.path.startswith(f"/api/models/{GATED}"):
                status, headers = 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def submit(client: TestClient, model: str) -> Any:
    return client.post("/api/jobs", json={"name": "hub model", "model": {"name": model}})


def test_a_model_the_hub_does_not_have_is_refused_at_once(
    client: TestClient, hub: str, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online(monkeypatch, hub)
    answer = submit(client, MISSING)
    assert answer.status_code == 422
    assert "the Hub has no model 'owner/missing'" in answer.json()["problems"]["model.name"]
    assert client.get("/api/jobs").json() == []  # nothing was created
    gated = submit(client, GATED)
    assert gated.status_code == 422 and "gated" in gated.json()["problems"]["model.name"]
    assert submit(client, EXISTS).status_code == 201


def test_a_hub_that_cannot_be_reached_is_no_answer(
    client: TestClient, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nobody listens
    assert submit(client, MISSING).status_code == 201


def test_offline_a_model_must_be_in_the_cache(
    client: TestClient, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    answer = submit(client, EXISTS)
    assert answer.status_code == 422
    assert "HF_HUB_OFFLINE=1" in answer.json()["problems"]["model.name"]
    assert "hf download owner/exists" in answer.json()["problems"]["model.name"]
    # the cache layout huggingface_hub writes: refs/main names the snapshot holding config.json
    repo = hf_cache / "models--owner--exists"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    assert submit(client, EXISTS).status_code == 201
    assert submit(client, "preset:tiny-llama").status_code == 201  # presets never ask


def test_offline_with_ray_workers_the_app_cannot_tell(
    client: TestClient, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(client.app.state.settings, "launcher", "ray")  # type: ignore[attr-defined]
    assert submit(client, MISSING).status_code == 201


def test_the_form_shows_the_refusal_next_to_the_model_field(
    client: TestClient, hub: str, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.app.test_pages import form_data

    online(monkeypatch, hub)
    page = client.post("/jobs/new", data=form_data(model__name=MISSING), follow_redirects=False)
    assert page.status_code == 422
    assert "the Hub has no model" in page.text
    assert client.get("/api/jobs").json() == []
