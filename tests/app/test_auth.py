"""Auth on a non-loopback bind: login page and session cookie, API tokens, revocation, cross-site refusal."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from app.auth import UnprotectedBindError, store
from app.auth.routes import MAX_FAILURES, safe_next
from app.auth.sessions import SESSION_COOKIE, make_session, session_valid
from app.auth.store import AuthError, auth_path, create_token, load_auth, revoke_token, set_password
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import metric_event

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id, with test-sized cost (the default costs ~0.5 s per hash on a busy 2-core CI box)."""
    monkeypatch.setattr(store, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def exposed(settings: Settings) -> Settings:
    """Settings of a dashboard bound to every interface, with a password set."""
    settings.host = "0.0.0.0"
    set_password(settings.data_dir, PASSWORD)
    return settings


@pytest.fixture
def exposed_client(exposed: Settings) -> Iterator[TestClient]:
    """A client of the exposed app, not logged in."""
    with TestClient(create_app(exposed)) as c:
        yield c


def login(client: TestClient, password: str = PASSWORD, next_url: str = "/") -> object:
    return client.post("/login", data={"password": password, "next": next_url}, follow_redirects=False)


def job_count(client: TestClient, token: str) -> int:
    response = client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return len(response.json())


def test_a_non_loopback_app_without_auth_refuses_to_start(settings: Settings) -> None:
    settings.host = "0.0.0.0"
    with pytest.raises(UnprotectedBindError, match="tuneboard auth set-password"):
        with TestClient(create_app(settings)):
            pass


def test_without_auth_only_loopback_connections_are_served(settings: Settings) -> None:
    # as if started with `uvicorn --host 0.0.0.0` (bypassing the start-up check) and reached on a LAN address
    with TestClient(create_app(settings), base_url="http://192.168.1.20:8000") as c:
        refused = c.get("/api/jobs")
        assert refused.status_code == 403
        assert "tuneboard auth set-password" in refused.json()["detail"]
        assert c.post("/api/jobs/demo").status_code == 403
        assert c.get("/api/health").status_code == 200
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/jobs").status_code == 200


def test_anonymous_requests_are_refused_on_a_non_loopback_bind(exposed_client: TestClient) -> None:
    c = exposed_client
    api = c.get("/api/jobs")
    assert api.status_code == 401
    assert "log in at /login" in api.json()["detail"]
    assert api.headers["www-authenticate"] == "Bearer"
    page = c.get("/jobs/new?preset=demo", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fjobs%2Fnew%3Fpreset%3Ddemo"
    assert c.post("/api/jobs/demo").status_code == 401
    assert c.post("/jobs/demo", follow_redirects=False).status_code == 401
    assert c.get("/openapi.json").status_code == 401
    assert c.get("/docs", follow_redirects=False).status_code == 303
    htmx = c.post("/jobs/1/cancel", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/login")
    # what stays open: health, static files, the login page
    assert c.get("/api/health").status_code == 200
    assert c.get("/static/css/app.css").status_code == 200
    assert c.get("/login").status_code == 200
    token = create_token(c.app.state.settings.data_dir, "check")  # type: ignore[attr-defined]
    assert job_count(c, token) == 0  # nothing was created by the refused posts


def test_every_route_refuses_anonymous_requests_except_the_open_ones(exposed_client: TestClient) -> None:
    import re

    from fastapi.routing import APIRoute

    from app.auth.middleware import is_open_path

    def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            inner = getattr(route, "original_router", None)  # FastAPI wraps each included router
            if inner is not None:
                yield from api_routes(inner.routes)

    checked = 0
    for route in api_routes(exposed_client.app.routes):  # type: ignore[attr-defined]
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in sorted(route.methods - {"HEAD"}):
            if is_open_path(method, path):
                continue
            response = exposed_client.request(method, path, follow_redirects=False)
            assert response.status_code in (401, 303), (method, route.path, response.status_code)
            if response.status_code == 303:
                assert response.headers["location"].startswith("/login?next="), (method, route.path)
            checked += 1
    assert checked > 20  # every router, including those added later, sits behind the middleware


def test_login_sets_an_httponly_samesite_cookie_and_logout_ends_it(exposed_client: TestClient) -> None:
    c = exposed_client
    wrong = login(c, "not the password")
    assert wrong.status_code == 401  # type: ignore[attr-defined]
    assert "Wrong password" in wrong.text  # type: ignore[attr-defined]
    assert SESSION_COOKIE not in c.cookies

    ok = login(c, next_url="/jobs/new")
    assert ok.status_code == 303  # type: ignore[attr-defined]
    assert ok.headers["location"] == "/jobs/new"  # type: ignore[attr-defined]
    cookie = ok.headers["set-cookie"].lower()  # type: ignore[attr-defined]
    assert cookie.startswith(SESSION_COOKIE + "=")
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back
    page = c.get("/")
    assert page.status_code == 200 and 'action="/logout"' in page.text
    assert c.get("/api/jobs").status_code == 200

    out = c.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert c.get("/api/jobs").status_code == 401


def test_the_session_cookie_is_secure_over_https(exposed: Settings) -> None:
    with TestClient(create_app(exposed), base_url="https://testserver") as c:
        response = login(c)
    assert "secure" in response.headers["set-cookie"].lower()  # type: ignore[attr-defined]


def test_a_forged_or_expired_session_cookie_is_refused(exposed_client: TestClient, exposed: Settings) -> None:
    secret = load_auth(exposed.data_dir).session_secret
    forged = make_session("another secret")
    expired = make_session(secret, now=1_000_000.0)
    for value in (forged, expired, "garbage", ""):
        exposed_client.cookies.set(SESSION_COOKIE, value)
        assert exposed_client.get("/api/jobs").status_code == 401
    assert session_valid(secret, make_session(secret), max_age_s=60)


def test_setting_a_new_password_logs_every_browser_out(exposed_client: TestClient, exposed: Settings) -> None:
    login(exposed_client)
    assert exposed_client.get("/api/jobs").status_code == 200
    set_password(exposed.data_dir, "a different password")
    assert exposed_client.get("/api/jobs").status_code == 401
    assert login(exposed_client, PASSWORD).status_code == 401  # type: ignore[attr-defined]


def test_an_api_token_works_and_a_revoked_token_is_refused(
    exposed_client: TestClient, exposed: Settings
) -> None:
    token = create_token(exposed.data_dir, "ci")
    auth = {"Authorization": f"Bearer {token}"}
    created = exposed_client.post("/api/jobs/demo", headers=auth)
    assert created.status_code == 201
    assert exposed_client.get(f"/api/jobs/{created.json()['id']}", headers=auth).status_code == 200
    assert exposed_client.get("/", headers=auth).status_code == 200  # pages accept tokens too

    revoke_token(exposed.data_dir, "ci")  # the running server notices without a restart
    refused = exposed_client.get("/api/jobs", headers=auth)
    assert refused.status_code == 401
    assert "invalid or revoked API token" in refused.json()["detail"]
    assert exposed_client.get("/api/jobs", headers={"Authorization": "Bearer tb_made-up"}).status_code == 401


def test_token_names_must_be_plain_and_unique(settings: Settings) -> None:
    create_token(settings.data_dir, "laptop")
    with pytest.raises(AuthError, match="exists already"):
        create_token(settings.data_dir, "laptop")
    for bad in ("../up", "with space", "", "x" * 65):
        with pytest.raises(AuthError, match="invalid token name"):
            create_token(settings.data_dir, bad)
    with pytest.raises(AuthError, match="no token named 'desk'; existing tokens: laptop"):
        revoke_token(settings.data_dir, "desk")


def test_auth_json_is_private_and_holds_no_plain_secret(exposed: Settings) -> None:
    token = create_token(exposed.data_dir, "laptop")
    path = auth_path(exposed.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and PASSWORD not in text
    data = json.loads(text)
    assert data["password_hash"].startswith("$argon2id$")
    assert [t["name"] for t in data["tokens"]] == ["laptop"]
    assert data["tokens"][0]["created_at"]


def test_secrets_never_reach_the_logs(
    exposed_client: TestClient, exposed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    token = create_token(exposed.data_dir, "quiet")
    with caplog.at_level(logging.DEBUG):
        login(exposed_client)
        login(exposed_client, "wrong guess 123")
        exposed_client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
        exposed_client.get("/api/jobs", headers={"Authorization": "Bearer tb_wrong-token-value"})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PASSWORD, "wrong guess 123", token, "tb_wrong-token-value"):
        assert secret not in logged


def test_too_many_failed_logins_are_throttled(exposed_client: TestClient) -> None:
    assert login(exposed_client, "guess").status_code == 401  # type: ignore[attr-defined]
    throttle = exposed_client.app.state.login_throttle  # type: ignore[attr-defined]
    for _ in range(MAX_FAILURES - 1):  # the rest of the allowance, without paying argon2 for each
        throttle.failed()
    throttled = login(exposed_client)  # even the right password waits now
    assert throttled.status_code == 429  # type: ignore[attr-defined]
    assert "Try again in" in throttled.text  # type: ignore[attr-defined]
    assert SESSION_COOKIE not in exposed_client.cookies


def test_login_redirects_only_to_paths_on_this_dashboard() -> None:
    assert safe_next("/jobs/3?x=1") == "/jobs/3?x=1"
    for hostile in (
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "javascript:alert(1)",
        "",
        None,
    ):
        assert safe_next(hostile) == "/"


def test_the_worker_ingest_needs_its_job_token_not_a_login(
    exposed_client: TestClient,
    started_job,
    exposed: Settings,  # type: ignore[no-untyped-def]
) -> None:
    job_id = started_job(token="job-secret")
    batch = {"events": [metric_event(1, 1, loss=1.0)]}
    ok = exposed_client.post(
        f"/api/jobs/{job_id}/events", json=batch, headers={"Authorization": "Bearer job-secret"}
    )
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    api_token = create_token(exposed.data_dir, "user")  # an API token is not a job token
    refused = exposed_client.post(
        f"/api/jobs/{job_id}/events", json=batch, headers={"Authorization": f"Bearer {api_token}"}
    )
    assert refused.status_code == 401
    assert exposed_client.post(f"/api/jobs/{job_id}/events", json=batch).status_code == 401


# ---------------------------------------------------------------------------------------------------------
# Cross-site request refusal (no form token: Origin / Referer / Sec-Fetch-Site)


def test_a_cross_origin_form_post_with_a_session_cookie_is_refused(exposed_client: TestClient) -> None:
    c = exposed_client
    login(c)
    token = create_token(c.app.state.settings.data_dir, "count")  # type: ignore[attr-defined]
    hostile_headers = [
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver:8080"},  # another port is another origin
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
    ]
    for headers in hostile_headers:
        refused = c.post("/jobs/demo", headers=headers, follow_redirects=False)
        assert refused.status_code == 403, headers
        assert "cross-site" in refused.json()["detail"]
    assert job_count(c, token) == 0

    same = c.post(
        "/jobs/demo",
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert same.status_code == 303
    assert (
        c.post(
            "/jobs/demo", headers={"Referer": "http://testserver/jobs/new"}, follow_redirects=False
        ).status_code
        == 303
    )
    assert job_count(c, token) == 2


def test_bearer_requests_are_exempt_from_the_origin_check(
    exposed_client: TestClient, exposed: Settings
) -> None:
    token = create_token(exposed.data_dir, "script")
    response = exposed_client.post(
        "/api/jobs/demo", headers={"Authorization": f"Bearer {token}", "Origin": "https://elsewhere.example"}
    )
    assert response.status_code == 201


def test_the_public_url_counts_as_this_dashboards_origin(exposed: Settings) -> None:
    exposed.public_url = "https://tuneboard.example.org"
    # a TLS-terminating proxy forwards to the app: the browser's Origin is the public one
    with TestClient(create_app(exposed), base_url="https://127.0.0.1:8000") as c:
        login(c)
        behind_proxy = c.post(
            "/jobs/demo", headers={"Origin": "https://tuneboard.example.org"}, follow_redirects=False
        )
        assert behind_proxy.status_code == 303


def test_cross_site_posts_are_refused_on_loopback_without_auth_too(client: TestClient) -> None:
    refused = client.post("/api/jobs/demo", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert client.get("/api/jobs").json() == []
    assert client.post("/api/jobs/demo").status_code == 201  # scripts without an Origin are fine


def test_auth_required_applies_on_loopback(settings: Settings, tmp_path: Path) -> None:
    settings.auth_required = True
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/jobs").status_code == 401
        page = c.get("/login")
        assert "No password is set" in page.text and "tuneboard auth set-password" in page.text
