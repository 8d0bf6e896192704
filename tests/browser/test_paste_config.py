"""The new-job form's "Paste a config" in a real browser: the estimate panel's "Create job" creates the pasted
config (it used to submit the fields, creating an unnamed 60-step default job), and a pasted Axolotl YAML is
converted for review with what could not be mapped listed, then created as converted.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

AXOLOTL_YAML = """\
base_model: preset:tiny-gemma3n
adapter: qlora
load_in_4bit: true
lora_r: 4
lora_alpha: 8
micro_batch_size: 2
sequence_len: 128
max_steps: 9
learning_rate: 0.001
datasets:
  - path: preset:country-capitals
    type: chat_template
output_dir: ./outputs/tiny
wandb_project: tiny
"""


def job_config(url: str, page_url: str) -> dict[str, object]:
    found = re.search(r"/jobs/(\d+)$", page_url)
    assert found, page_url
    job = httpx.get(f"{url}/api/jobs/{found.group(1)}", timeout=10).json()
    return dict(job["config"])


def test_the_estimate_panels_create_button_creates_the_pasted_config(
    idle_app: str, chromium: Browser
) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(idle_app + "/jobs/new")
    page.locator("#paste-panel summary").click()
    page.locator("#config-text").fill("name: pasted run\ntraining: {max_steps: 7}\n")
    side = page.locator(".side-actions button")
    with page.expect_navigation(url=re.compile(r"/jobs/\d+$")):
        side.click()
    config = job_config(idle_app, page.url)
    assert config["name"] == "pasted run"
    assert config["training"]["max_steps"] == 7  # type: ignore[index]
    # with the paste panel closed the same button creates the fields' job, as before
    page.goto(idle_app + "/jobs/new")
    page.locator("#f-name").fill("from the fields")
    with page.expect_navigation(url=re.compile(r"/jobs/\d+$")):
        side.click()
    assert job_config(idle_app, page.url)["name"] == "from the fields"


def test_a_pasted_axolotl_config_is_converted_for_review_then_created(
    idle_app: str, chromium: Browser
) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(idle_app + "/jobs/new")
    page.locator("#paste-panel summary").click()
    page.locator("#config-text").fill(AXOLOTL_YAML)
    page.get_by_role("button", name="Create job from this config").click()
    notice = page.locator("#import-notice")
    notice.wait_for()
    assert "Converted from an Axolotl config" in notice.inner_text()
    unmapped = page.locator("#import-unmapped li").all_inner_texts()
    assert any(t.startswith("output_dir:") for t in unmapped) and any(
        t.startswith("wandb_project:") for t in unmapped
    )
    converted = page.locator("#config-text").input_value()
    assert "name: preset:tiny-gemma3n" in converted and "max_steps: 9" in converted
    assert page.locator("#f-lora-r").input_value() == "4"  # the fields show the converted config too
    with page.expect_navigation(url=re.compile(r"/jobs/\d+$")):
        page.locator(".side-actions button").click()
    config = job_config(idle_app, page.url)
    assert config["model"]["name"] == "preset:tiny-gemma3n"  # type: ignore[index]
    assert config["quantization"]["method"] == "nf4"  # type: ignore[index]
    assert config["lora"]["r"] == 4 and config["training"]["max_steps"] == 9  # type: ignore[index]
    assert config["dataset"]["source"] == "preset:country-capitals"  # type: ignore[index]
