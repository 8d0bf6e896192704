"""Sweep runs told apart in a real browser: two runs whose long names share everything but the end, as a
sweep names them, must show the swept value itself in the compare legend and summary, whole and visible."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator

pytestmark = pytest.mark.browser

LONG = "demo: tiny Gemma 3n learns capitals, one of a sweep over the learning rate of the adapter · "


def fully_visible(element: Locator) -> bool:
    """Not cut by an ellipsis or overflow: the element's whole text fits its box."""
    return bool(element.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && e.offsetParent !== null"))


def test_the_swept_values_are_shown_whole(idle_app: str, chromium: Browser) -> None:
    ids = []
    for rate in (0.0002, 0.0005):
        config = {"name": f"{LONG}learning_rate={rate}", "training": {"learning_rate": rate}}
        answer = httpx.post(idle_app + "/api/jobs", json=config, timeout=10)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{idle_app}/compare?ids={ids[0]},{ids[1]}")
    for job_id, shown in zip(ids, ("learning_rate=0.0002", "learning_rate=0.0005"), strict=True):
        legend = page.locator(f"#compare-legend li[data-run='{job_id}'] .legend-distinct")
        assert legend.inner_text() == shown
        assert fully_visible(legend)
        summary = page.locator(f"#compare-row-{job_id} .distinct")
        assert summary.inner_text() == shown
        assert fully_visible(summary)
