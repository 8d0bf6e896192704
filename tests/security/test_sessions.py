"""Sessions and tokens end when they are ended: logout revokes its cookie, a revoked token's open stream
closes, and anonymous health checks learn nothing about jobs or processes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from app.auth import store
from app.auth.sessions import SESSION_COOKIE
from app.auth.store import create_token, revoke_token, set_password
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import LiveServer

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id at test-sized cost."""
    monkeypatch.setattr(store, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def protected(settings: Settings) -> Settings:
    """A dashboard with a password."""
    set_password(settings.data_dir, PASSWORD)
    return settings


def logged_in_cookie(c: TestClient) -> str:
    answer = c.post("/login", data={"password": PASSWORD, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303
    return answer.cookies[SESSION_COOKIE]


def test_a_logged_out_cookie_no_longer_opens_the_dashboard(protected: Settings) -> None:
    with TestClient(create_app(protected)) as c:
        cookie = logged_in_cookie(c)
        assert c.get("/api/jobs").status_code == 200
        assert c.post("/logout", follow_redirects=False).status_code == 303
        # someone who copied the cookie before the logout replays it
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, cookie)
        replay = c.get("/api/jobs")
        assert replay.status_code == 401
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_logging_out_ends_only_that_session(protected: Settings) -> None:
    with TestClient(create_app(protected)) as laptop, TestClient(create_app(protected)) as desktop:
        logged_in_cookie(laptop)
        logged_in_cookie(desktop)
        laptop.post("/logout", follow_redirects=False)
        assert desktop.get("/api/jobs").status_code == 200


def test_a_revoked_token_ends_its_open_stream(protected: Settings, live_server: LiveServer) -> None:
    token = create_token(protected.data_dir, "laptop")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(10, read=5)) as c:
        with c.stream("GET", "/api/stream", headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            revoke_token(protected.data_dir, "laptop")
            revoked_at = time.monotonic()
            # read until the server closes the stream; a read timeout (5 s of silence) fails the test
            for _line in lines:
                assert time.monotonic() - revoked_at < 5, "the stream outlived its revoked token"
        assert time.monotonic() - revoked_at < 5
        assert c.get("/api/jobs", headers=headers).status_code == 401


class FakeScheduler:
    """A scheduler snapshot with a running job, as /api/health shows it."""

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "running": True,
            "jobs": [{"job_id": 41, "pid": 4242, "gpus": [0]}],
            "free_gpus": [1],
            "last_error": "job 41: /srv/tuneboard/runs/41 is gone",
        }

    async def stop(self) -> None:
        """Nothing to stop (the app's lifespan calls this at shutdown)."""


def test_anonymous_health_shows_no_job_ids_or_pids(protected: Settings) -> None:
    with TestClient(create_app(protected)) as c:
        c.app.state.scheduler = FakeScheduler()  # type: ignore[attr-defined]
        anonymous = c.get("/api/health")
        assert anonymous.status_code == 200
        body = anonymous.json()
        assert body["ok"] is True and body["db"] == "ok"
        assert body["scheduler"]["running"] is True and body["scheduler"]["jobs"] == 1
        for secret in ("4242", "41", "/srv/tuneboard"):
            assert secret not in anonymous.text
        token = create_token(protected.data_dir, "ops")
        detailed = c.get("/api/health", headers={"Authorization": f"Bearer {token}"}).json()
        assert detailed["scheduler"]["jobs"][0]["pid"] == 4242


def test_health_stays_detailed_on_the_default_loopback_dashboard(settings: Settings) -> None:
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        c.app.state.scheduler = FakeScheduler()  # type: ignore[attr-defined]
        assert c.get("/api/health").json()["scheduler"]["jobs"][0]["pid"] == 4242
