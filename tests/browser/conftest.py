"""Browser-test fixtures: the real app in its own process, and Debian's chromium through Playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.app_process import free_port, uvicorn_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def idle_app(tmp_path: Path) -> Iterator[str]:
    """The app on a free loopback port, default settings, no scheduler (jobs stay queued)."""
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


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Debian's chromium, headless."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()
