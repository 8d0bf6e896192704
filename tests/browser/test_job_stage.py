"""Before a run's first metric, its charts say what it is doing (a real browser against the real app): the
newest message of the events table appears under "Waiting for data…", and goes once points are drawn.
The worker side is simulated at the seam we own (tests/browser/worker_side.py). Also: a CPU run's memory
chart does not promise a GPU utilisation line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.worker_side import post, started_jobs

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser


def test_the_charts_say_what_the_run_is_doing_before_data(
    idle_app: str, chromium: Browser, tmp_path: Path
) -> None:
    (job_id,) = started_jobs(tmp_path / "data", ["stages"])
    page = chromium.new_page()
    page.goto(f"{idle_app}/jobs/{job_id}")
    stage = page.locator("#chart-loss .chart-empty .chart-stage")
    message = "Loading preset:tiny-gemma3n in 4-bit (nf4)…"
    post(idle_app, job_id, [{"seq": 1, "kind": "log", "step": 0, "ts": 1.0, "payload": {"message": message}}])
    stage.wait_for(timeout=15_000)
    assert stage.inner_text() == message
    assert "Waiting for data" in page.locator("#chart-loss .chart-empty").inner_text()
    point = {"seq": 2, "kind": "metric", "step": 1, "ts": 2.0, "payload": {"loss": 2.5}}
    post(idle_app, job_id, [point])
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '1'", timeout=15_000)
    assert page.locator("#chart-loss .chart-empty").count() == 0  # the chart replaced the note


def test_a_cpu_runs_memory_chart_does_not_speak_of_a_gpu(
    idle_app: str, chromium: Browser, tmp_path: Path
) -> None:
    (job_id,) = started_jobs(tmp_path / "data", ["on the cpu"], assigned_gpus="")
    page = chromium.new_page()
    page.goto(f"{idle_app}/jobs/{job_id}")
    note = page.locator('[data-chart="memory"] .chart-note')
    assert "GPU" not in note.inner_text() and "RAM" in note.inner_text()
    post(idle_app, job_id, [{"seq": 1, "kind": "metric", "step": 1, "ts": 1.0, "payload": {"rss_gb": 0.5}}])
    page.wait_for_function("document.getElementById('chart-memory').dataset.points === '1'", timeout=15_000)
    assert "GPU" not in note.inner_text()  # the live updates keep the CPU wording
