"""The HTTP edge: only the names the dashboard is reachable as are served (DNS rebinding), every response
refuses framing and sniffing, and cross-site GETs that start work are refused before any route runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

FOREIGN = "rebind.attacker.test:8000"


@pytest.fixture
def loopback(settings: Settings) -> Settings:
    """The default: 127.0.0.1, no password, no extra allowed hosts (not even the test client's name)."""
    settings.allowed_hosts = []
    return settings


@pytest.fixture
def local_client(loopback: Settings) -> Iterator[TestClient]:
    """A client that reaches the app the way a browser on the same machine does: http://127.0.0.1:8000."""
    with TestClient(create_app(loopback), base_url="http://127.0.0.1:8000") as c:
        yield c


def test_a_foreign_host_header_is_refused_before_any_route(local_client: TestClient) -> None:
    c = local_client
    read = c.get("/api/jobs", headers={"Host": FOREIGN})
    assert read.status_code == 421
    assert "TUNEBOARD_ALLOWED_HOSTS" in read.json()["detail"]
    write = c.post("/api/jobs/demo", headers={"Host": FOREIGN, "Origin": f"http://{FOREIGN}"})
    assert write.status_code == 421
    page = c.get("/jobs/new?preset=demo", headers={"Host": FOREIGN})
    assert page.status_code == 421
    assert c.get("/api/jobs").json() == []  # nothing was created


def test_loopback_names_are_served_on_the_default_bind(local_client: TestClient) -> None:
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "localhost."):
        assert local_client.get("/api/jobs", headers={"Host": host}).status_code == 200, host


def test_a_missing_host_header_is_refused(loopback: Settings) -> None:
    # HTTP/1.0 clients may omit Host; nothing then says which site the browser thinks it talks to
    with TestClient(create_app(loopback), base_url="http://127.0.0.1:8000") as c:
        response = c.get("/api/jobs", headers={"Host": ""})
        assert response.status_code == 421


def test_allowed_hosts_and_the_public_url_name_are_served(loopback: Settings) -> None:
    loopback.allowed_hosts = ["dash.example.org"]
    loopback.public_url = "https://tb.example.com"
    with TestClient(create_app(loopback), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/jobs", headers={"Host": "dash.example.org"}).status_code == 200
        assert c.get("/api/jobs", headers={"Host": "tb.example.com"}).status_code == 200
        assert c.get("/api/jobs", headers={"Host": "other.example.org"}).status_code == 421


def test_a_wildcard_bind_serves_ip_literals_but_only_listed_names(loopback: Settings) -> None:
    from app.auth.store import set_password

    loopback.host = "0.0.0.0"
    set_password(loopback.data_dir, "correct horse battery")
    with TestClient(create_app(loopback), base_url="http://10.1.2.3:8000") as c:
        # an IP literal cannot be rebound: it is the machine itself (here: asked to log in)
        assert c.get("/api/jobs", headers={"Host": "192.168.1.20:8000"}).status_code == 401
        assert c.get("/api/jobs", headers={"Host": "[fe80::1]:8000"}).status_code == 401
        assert c.get("/api/jobs", headers={"Host": "gpu-box.lan:8000"}).status_code == 421


def test_an_explicit_star_serves_every_host(loopback: Settings) -> None:
    loopback.allowed_hosts = ["*"]
    with TestClient(create_app(loopback), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/jobs", headers={"Host": FOREIGN}).status_code == 200


def test_allowed_hosts_are_read_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOARD_ALLOWED_HOSTS", " dash.example.org, Tb.Example.com ,")
    assert Settings().allowed_hosts == ["dash.example.org", "tb.example.com"]


def test_every_response_refuses_framing_and_sniffing(local_client: TestClient) -> None:
    c = local_client
    responses = [
        c.get("/"),
        c.get("/jobs/new?preset=demo"),
        c.get("/api/jobs"),
        c.get("/api/jobs/999"),  # an error answer
        c.get("/static/does-not-exist.css"),  # a mount, not a route
        c.get("/api/jobs", headers={"Host": FOREIGN}),  # the host refusal itself
    ]
    for response in responses:
        where = f"{response.request.url} → {response.status_code}"
        assert response.headers.get("x-frame-options") == "DENY", where
        assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", ""), where
        assert response.headers.get("x-content-type-options") == "nosniff", where
        assert response.headers.get("referrer-policy") == "same-origin", where


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/1/try?prompt=hi",  # loads a model in a new process
        "/api/datasets/1/preview",  # runs a tokenizer in a new process
        "/datasets/1/partials/preview",
        "/api/jobs/1/adapter",  # builds a zip
    ],
)
def test_a_cross_site_get_that_starts_work_is_refused(local_client: TestClient, path: str) -> None:
    refused = local_client.get(path, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert "cross-site" in refused.json()["detail"]
    sibling = local_client.get(path, headers={"Sec-Fetch-Site": "same-site"})  # another port of localhost
    assert sibling.status_code == 403
    foreign_origin = local_client.get(path, headers={"Origin": "http://evil.test"})
    assert foreign_origin.status_code == 403
    # from the dashboard's own page, or typed into the address bar, the route itself answers (about no job 1)
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        answer = local_client.get(path, headers=headers)
        assert answer.status_code != 403 and "cross-site" not in answer.text, headers


def test_a_cross_site_get_that_only_reads_is_still_served(local_client: TestClient) -> None:
    # links from elsewhere to a page keep working; only GETs that start work are refused
    response = local_client.get("/", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
