"""The new-job form says what is wrong while it is edited (a real browser): a bad value is listed in the
estimate panel with a link to its input, the input is marked invalid before anything is submitted, and fixing
it clears both. Before, problems appeared only after "Create job"."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser


def test_a_bad_value_is_flagged_before_submitting(idle_app: str, chromium: Browser) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(idle_app + "/jobs/new")
    rate = page.locator("#f-training-learning_rate")
    rate.fill("fast please")
    rate.dispatch_event("change")
    problem = page.locator("[data-live-problems] li[data-input='f-training-learning_rate']")
    problem.wait_for(timeout=10_000)
    assert "learning" in problem.inner_text().lower()
    page.wait_for_function(
        "document.getElementById('f-training-learning_rate').getAttribute('aria-invalid') === 'true'"
    )
    assert page.url.endswith("/jobs/new")  # nothing was submitted
    rate.fill("0.0002")
    rate.dispatch_event("change")
    problem.wait_for(state="detached", timeout=10_000)
    page.wait_for_function(
        "!document.getElementById('f-training-learning_rate').hasAttribute('aria-invalid')"
    )
