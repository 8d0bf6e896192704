"""The colour theme in a real browser: it follows the system until the top bar's toggle picks light or dark;
the choice is kept in this browser (a reload, another page) — and dropped again by cycling back to "auto"."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

DARK_BG, LIGHT_BG = "rgb(20, 23, 28)", "rgb(246, 247, 249)"  # --bg of each theme (static/css/app.css)


def theme(page: Page) -> tuple[str, str]:
    return (
        str(page.evaluate("document.documentElement.dataset.theme")),
        str(page.evaluate("getComputedStyle(document.body).backgroundColor")),
    )


def test_the_toggle_overrides_the_system_and_is_kept(idle_app: str, chromium: Browser) -> None:
    context = chromium.new_context(color_scheme="light")
    page = context.new_page()
    page.goto(idle_app + "/")
    assert theme(page) == ("light", LIGHT_BG)
    toggle = page.locator("#theme-toggle")
    assert "follows the system" in (toggle.get_attribute("aria-label") or "")
    toggle.click()  # auto → light: the same look, now chosen
    assert theme(page) == ("light", LIGHT_BG) and toggle.get_attribute("aria-label") == "Colour theme: light"
    toggle.click()  # → dark
    assert theme(page) == ("dark", DARK_BG)
    page.goto(idle_app + "/datasets")  # another page, the same browser: still dark, from the first paint
    assert theme(page) == ("dark", DARK_BG)
    page.emulate_media(color_scheme="light")
    assert theme(page) == ("dark", DARK_BG)  # the choice wins over the system
    page.locator("#theme-toggle").click()  # → auto: the system's again
    assert theme(page) == ("light", LIGHT_BG)
    page.emulate_media(color_scheme="dark")  # and it follows the system live
    page.wait_for_function("document.documentElement.dataset.theme === 'dark'")
    context.close()


def test_a_dark_system_is_dark_before_any_choice(idle_app: str, chromium: Browser) -> None:
    page = chromium.new_page(color_scheme="dark")
    page.goto(idle_app + "/jobs/new")
    assert theme(page) == ("dark", DARK_BG)
