"""The login throttle: per account, with a short growing delay; a forwarded header neither resets it nor
names the client unless a proxy is configured; the owner gets in once the delay has passed."""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.auth import store
from app.auth.routes import MAX_DELAY_S, MAX_FAILURES, LoginThrottle
from app.auth.store import set_password
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


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def post_login(client: httpx.Client | TestClient, password: str, **headers: str) -> Any:
    return client.post(
        "/login", data={"password": password, "next": "/"}, headers=headers, follow_redirects=False
    )


def test_rotating_x_forwarded_for_gives_no_extra_guesses(
    protected: Settings, live_server: LiveServer
) -> None:
    # a real uvicorn on loopback, as `uvicorn app.main:create_app` runs it (it believes X-Forwarded-For
    # from 127.0.0.1 by default): each guess claims to come from another address
    statuses = []
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for i in range(MAX_FAILURES + 3):
            statuses.append(post_login(c, f"guess {i}", **{"X-Forwarded-For": f"203.0.113.{i}"}).status_code)
    assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES
    assert set(statuses[MAX_FAILURES:]) == {429}


def test_the_right_password_works_once_the_short_delay_has_passed(protected: Settings) -> None:
    clock = FakeClock()
    app = create_app(protected)
    app.state.login_throttle = LoginThrottle(clock=clock)
    with TestClient(app) as c:
        for i in range(MAX_FAILURES + 4):  # each guess waits out the delay the one before it earned
            assert post_login(c, f"guess {i}").status_code == 401
            clock.now += MAX_DELAY_S
        assert post_login(c, "another guess").status_code == 401
        refused = post_login(c, PASSWORD)  # right away: even the owner waits, but not for long
        assert refused.status_code == 429
        wait = int(re.search(r"Try again in (\d+) seconds", refused.text).group(1))  # type: ignore[union-attr]
        assert 0 < wait <= MAX_DELAY_S + 1
        clock.now += wait
        assert post_login(c, PASSWORD).status_code == 303


def test_the_delay_grows_with_each_failure_and_stays_bounded() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    delays = []
    for _ in range(MAX_FAILURES + 12):
        clock.now += MAX_DELAY_S  # the previous wait is over, its failure still counts
        assert throttle.begin() == 0
        throttle.failed()
        delays.append(throttle.retry_after())
    assert delays[: MAX_FAILURES - 1] == [0] * (MAX_FAILURES - 1)
    growing = delays[MAX_FAILURES - 1 :]
    assert growing == sorted(growing) and growing[0] < growing[-1] == MAX_DELAY_S


def test_concurrent_guesses_share_one_slot() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(MAX_FAILURES):
        throttle.failed()
    clock.now += MAX_DELAY_S
    answers: list[float] = []
    threads = [threading.Thread(target=lambda: answers.append(throttle.begin())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers)[0] == 0 and all(a > 0 for a in sorted(answers)[1:])


def test_serve_ignores_forwarded_headers_unless_a_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import uvicorn

    from tuneboard.cli import app as cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: calls.append(kwargs))
    monkeypatch.delenv("TUNEBOARD_TRUSTED_PROXIES", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert calls[-1]["proxy_headers"] is False
    monkeypatch.setenv("TUNEBOARD_TRUSTED_PROXIES", "10.0.0.7, 10.0.0.8")
    result = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert calls[-1]["proxy_headers"] is True
    assert calls[-1]["forwarded_allow_ips"] == ["10.0.0.7", "10.0.0.8"]


def test_x_forwarded_proto_counts_only_behind_a_configured_proxy(settings: Settings) -> None:
    # a page on https://127.0.0.1:8000 is another origin than the plain-http dashboard there
    headers = {"Origin": "https://127.0.0.1:8000", "X-Forwarded-Proto": "https"}
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        assert c.post("/api/jobs/demo", headers=headers).status_code == 403
    settings.trusted_proxies = ["127.0.0.1"]
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        assert c.post("/api/jobs/demo", headers=headers).status_code == 201
