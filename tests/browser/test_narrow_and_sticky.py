"""Layout in a real browser: a phone's 390 px width, and the new-job form's estimate panel while editing.

At 390 px the job page scrolled sideways (chart cards had a 25 rem minimum), "New job" wrapped in the top bar
and the job list's status was cut off. On a desktop the estimate panel scrolled away with the form: its column
was only as tall as the panel, so `position: sticky` had nowhere to stick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def sideways_overflow(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def test_a_phone_sees_every_page_without_scrolling_sideways(idle_app: str, chromium: Browser) -> None:
    answer = httpx.post(idle_app + "/api/jobs", json={"name": "a run with a fairly long name"}, timeout=10)
    job_id = answer.json()["id"]
    page = chromium.new_page(viewport=PHONE)
    for path in ("/", f"/jobs/{job_id}", "/jobs/new", "/datasets"):
        page.goto(idle_app + path)
        assert sideways_overflow(page) <= 0, path
        for link in page.locator(".topbar nav a").all():  # one line each: no "New / job"
            box = link.bounding_box()
            line = float(link.evaluate("e => parseFloat(getComputedStyle(e).lineHeight) || 20"))
            assert box is not None and box["height"] < 2 * line + 2 * 14, (path, link.inner_text())
            assert link.evaluate("e => e.getClientRects().length") == 1, (path, link.inner_text())
    page.goto(idle_app + "/")
    badge = page.locator("#jobs-table .badge").first
    box = badge.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], "the status is cut off"
    wrap = page.locator("#jobs-table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the job list scrolls sideways"


def test_the_estimate_panel_stays_in_view_while_editing(idle_app: str, chromium: Browser) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 720})
    page.goto(idle_app + "/jobs/new")
    panel = page.locator("#estimate-title")
    page.locator("#job-form .form-actions").scroll_into_view_if_needed()  # the bottom of the form
    page.wait_for_timeout(100)
    box = panel.bounding_box()
    assert box is not None and 0 <= box["y"] < 720, f"the estimate scrolled out of view: {box}"
