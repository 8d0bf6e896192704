"""The top bar's "API" page in a real browser (Debian chromium through Playwright) with no internet: every
request that leaves the app is refused, as on an air-gapped machine, and the page must still draw the API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.app_process import free_port, uvicorn_app

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        TUNEBOARD_DATA_DIR=str(tmp_path / "data"),
        TUNEBOARD_HOST="127.0.0.1",
        TUNEBOARD_PORT=str(port),
        TUNEBOARD_SCHEDULER_ENABLED="false",
    )
    with uvicorn_app(env, port, tmp_path / "uvicorn.log") as url:
        yield url


def test_the_api_page_works_with_no_internet(live_app: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    refused: list[str] = []

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.route("**/*", offline)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_app + "/")
            page.click("text=API")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # an operation is drawn
            assert page.locator(".swagger-ui .opblock").count() > 10
            assert refused == []
            assert errors == []
        finally:
            browser.close()
