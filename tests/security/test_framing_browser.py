"""In a real browser (Debian chromium through Playwright): a page whose name rebinds to 127.0.0.1 cannot read
or drive the dashboard, and a page on another site cannot frame it to get a one-click job start.

Rebinding is simulated with chromium's --host-resolver-rules: rebind.attacker.test resolves to 127.0.0.1, and
the attacker's first page is handed to the browser by Playwright (as the attacker's server would before the
switch), so its fetches go, same-origin in the browser's eyes, to the app's loopback port.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.app_process import free_port, uvicorn_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ATTACKER = "rebind.attacker.test"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1, MAP framer.attacker.test 127.0.0.1",
    # chromium's own private/local-network checks would stop the rebound fetch before it reached the app;
    # they are off here so the test judges the app's defence, which must hold for every browser
    "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
    "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks",
]


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[str]:
    """`uvicorn app.main:create_app` in its own process on a free loopback port, default settings."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        TUNEBOARD_DATA_DIR=str(tmp_path / "data"),
        TUNEBOARD_HOST="127.0.0.1",
        TUNEBOARD_PORT=str(port),
        TUNEBOARD_SCHEDULER_ENABLED="false",  # nothing here needs a job to run
    )
    env.pop("TUNEBOARD_ALLOWED_HOSTS", None)  # exactly what an operator gets by default
    with uvicorn_app(env, port, tmp_path / "uvicorn.log") as url:
        yield url


@pytest.fixture
def attacker_site() -> Iterator[dict[str, Any]]:
    """A tiny http server on another loopback port serving the pages put in the returned dict."""
    pages: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = str(pages.get(self.path, "not found")).encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pages["port"] = server.server_address[1]
    try:
        yield pages
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, with the attacker's names resolving to 127.0.0.1."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def jobs_on(url: str) -> list[Any]:
    """The job list, asked for directly (the owner's view)."""
    answer = httpx.get(url + "/api/jobs", timeout=10)
    assert answer.status_code == 200
    return list(answer.json())


def test_a_rebound_page_can_neither_read_the_jobs_nor_create_one(live_app: str, browser: Browser) -> None:
    port = int(live_app.rsplit(":", 1)[1])
    origin = f"http://{ATTACKER}:{port}"
    page = browser.new_page()
    # the attacker's own page at that origin; after this only the app answers for the name
    page.route(f"{origin}/attack.html", lambda route: route.fulfill(status=200, body="<title>hi</title>"))
    page.goto(f"{origin}/attack.html")
    seen = page.evaluate(
        """async () => {
            const read = await fetch('/api/jobs');
            const create = await fetch('/api/jobs/demo', {method: 'POST'});
            return {read: read.status, readBody: await read.text(), create: create.status};
        }"""
    )
    assert seen["read"] == 421, seen
    assert seen["create"] == 421, seen
    assert not seen["readBody"].startswith("["), seen
    assert jobs_on(live_app) == []
    page.close()


def test_a_foreign_page_cannot_frame_the_new_job_form(
    live_app: str, attacker_site: dict[str, Any], browser: Browser
) -> None:
    target = f"{live_app}/jobs/new?preset=demo"
    attacker_site["/frame.html"] = (
        f'<title>win a prize</title><iframe id="victim" src="{target}" width="800" height="600"></iframe>'
    )
    page = browser.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text))
    page.goto(f"http://framer.attacker.test:{attacker_site['port']}/frame.html")
    page.wait_for_load_state("load")
    page.wait_for_timeout(500)  # let the frame settle (load or be refused)
    frames = [f for f in page.frames if f != page.main_frame]
    assert frames, "the iframe is missing"
    frame = frames[0]
    # a refused frame is chromium's error page, not the dashboard: no form, no submit button to click
    assert frame.locator("#job-form").count() == 0, (
        f"the dashboard rendered inside a foreign page: {frame.url}"
    )
    assert frame.locator("button[type=submit], input[type=submit]").count() == 0
    assert jobs_on(live_app) == []
    page.close()
