"""Run management in a real browser: search as you type, the shortcuts the page documents, rows the live
stream must not put back into a filtered list, and deleting a run through its confirmation page."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser


def _job(url: str, name: str) -> int:
    answer = httpx.post(url + "/api/jobs", json={"name": name}, timeout=10)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _shown(page: Page) -> list[str]:
    return page.eval_on_selector_all("#jobs-body tr", "rows => rows.map(r => r.dataset.jobId)")


def test_search_as_you_type_and_the_shortcuts(idle_app: str, chromium: Browser) -> None:
    ids = {name: _job(idle_app, name) for name in ("capitals one", "support chats", "capitals two")}
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(idle_app + "/")
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length === 3")
    page.evaluate("window.__sameDocument = true")
    assert page.locator("#shortcuts-help").is_visible()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "list-q"
    page.keyboard.type("capitals")
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length === 2")
    assert _shown(page) == [str(ids["capitals two"]), str(ids["capitals one"])]
    assert page.evaluate("window.__sameDocument") is True  # no reload
    assert page.url.endswith("/?q=capitals")
    assert "Showing 1–2 of 2 runs" in page.locator("#list-count").inner_text()
    # a run created now reaches this filtered list through the live stream: it is not shown, a notice is
    _job(idle_app, "support chats again")
    page.locator("#new-runs-notice").wait_for(state="visible")
    assert _shown(page) == [str(ids["capitals two"]), str(ids["capitals one"])]
    page.keyboard.press("Escape")  # clears the search
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length === 4")
    page.keyboard.press("Escape")  # leaves the box
    page.keyboard.press("c")
    assert "Tick 2 to 8 runs" in page.locator("#shortcut-status").inner_text()
    page.check(f"#job-row-{ids['capitals one']} input[type=checkbox]")
    page.check(f"#job-row-{ids['support chats']} input[type=checkbox]")
    page.keyboard.press("c")
    page.wait_for_url("**/compare?ids=*")
    chosen = {int(i) for v in parse_qs(urlsplit(page.url).query)["ids"] for i in v.split(",")}
    assert chosen == {ids["capitals one"], ids["support chats"]}
    page.go_back()
    page.wait_for_selector("#list-q")
    page.keyboard.press("n")
    page.wait_for_url("**/jobs/new")


def test_a_filtered_page_keeps_the_stream_from_adding_other_runs(idle_app: str, chromium: Browser) -> None:
    ids = [_job(idle_app, f"run {i}") for i in range(3)]
    httpx.patch(f"{idle_app}/api/jobs/{ids[0]}", json={"tags": ["keep"]}, timeout=10)
    page = chromium.new_page()
    page.goto(idle_app + "/?tag=keep")
    _job(idle_app, "new while filtered")  # the stream's next batch names it, and the older ones first
    page.locator("#new-runs-notice").wait_for(state="visible")
    assert _shown(page) == [str(ids[0])]


def test_deleting_a_run_through_its_confirmation_page(idle_app: str, chromium: Browser) -> None:
    job_id = _job(idle_app, "to delete")
    assert httpx.post(f"{idle_app}/api/jobs/{job_id}/cancel", timeout=10).status_code == 200
    page = chromium.new_page()
    page.goto(f"{idle_app}/jobs/{job_id}")
    page.click("[data-action=delete]")
    page.wait_for_url(f"**/jobs/{job_id}/delete")
    assert "no run directory" in page.locator("#delete-what").inner_text()
    page.click("#delete-button")
    page.wait_for_url(f"**/?deleted={job_id}")
    assert f"Job #{job_id} and its files were deleted" in page.locator("#deleted-notice").inner_text()
    assert httpx.get(f"{idle_app}/api/jobs/{job_id}", timeout=10).status_code == 404
