"""The top bar's "API" page in a real browser (Debian chromium through Playwright) with no internet: every
request that leaves the app is refused, as on an air-gapped machine, and the page must still draw the API."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

pytestmark = pytest.mark.browser


def test_the_api_page_works_with_no_internet(idle_app: str, chromium: Browser) -> None:
    refused: list[str] = []

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    page = chromium.new_page()
    page.route("**/*", offline)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(idle_app + "/")
    page.click("text=API")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # an operation is drawn
    assert page.locator(".swagger-ui .opblock").count() > 10
    assert refused == []
    assert errors == []
