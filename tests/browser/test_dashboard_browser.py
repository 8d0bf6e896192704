"""The dashboard in a real browser: the real app (uvicorn, scheduler, worker) trains the demo job while
Debian's chromium watches the charts fill. Saves docs/screenshots/jobs-list.png and job-detail.png."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_DEADLINE_S = 240  # the demo takes well under a minute alone; other tests may share the 2 cores

# sums the layout shifts the page suffers while data arrives (Chrome's Layout Instability API)
CLS_PROBE = """
window.__cls = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
}).observe({ type: "layout-shift", buffered: true });
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[str]:
    """`uvicorn app.main:create_app` in its own process, with the real scheduler, on a free loopback port."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        TUNEBOARD_DATA_DIR=str(tmp_path / "data"),
        TUNEBOARD_HOST="127.0.0.1",
        TUNEBOARD_PORT=str(port),  # the worker reports to settings.app_url, built from host and port
        TUNEBOARD_SCHEDULER_ENABLED="true",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    log = (tmp_path / "uvicorn.log").open("wb")
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"uvicorn exited with {proc.returncode}: {(tmp_path / 'uvicorn.log').read_text()}"
                )
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not answer /api/health within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_demo_job_submitted_from_the_form_trains_live_in_the_browser(live_app: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.add_init_script(CLS_PROBE)

            # an empty dashboard offers the demo
            page.goto(live_app + "/")
            assert page.locator("#empty-state").is_visible()
            assert "No runs yet" in page.locator("#empty-state").inner_text()
            # a job created elsewhere appears without a reload; this one asks for a GPU this machine lacks,
            # so the scheduler fails it at once with a reason (and it leaves the CPU slot to the demo)
            gpu_job = httpx.post(
                f"{live_app}/api/jobs", json={"name": "needs a GPU", "resources": {"gpus": 1}}
            )
            gpu_job_id = gpu_job.json()["id"]
            page.wait_for_selector(f"#job-row-{gpu_job_id}")
            assert page.locator("#empty-state").is_hidden()
            assert page.locator("#jobs-table-wrap").is_visible()
            page.wait_for_function(
                f"() => document.getElementById('job-row-{gpu_job_id}').dataset.status === 'failed'"
            )

            # the form, prefilled with the demo settings; the estimate follows a change through htmx
            page.goto(live_app + "/jobs/new?preset=demo")
            estimate = page.locator("[data-estimate-total]")
            before = estimate.inner_text()
            page.fill("#f-training-batch_size", "64")
            page.locator("#f-training-batch_size").dispatch_event("change")
            page.wait_for_function(
                "(b) => document.querySelector('[data-estimate-total]').textContent !== b", arg=before
            )
            page.fill("#f-training-batch_size", "8")
            page.locator("#f-training-batch_size").dispatch_event("change")
            page.wait_for_function(
                "(b) => document.querySelector('[data-estimate-total]').textContent === b", arg=before
            )
            page.click("#job-form button[type=submit]")
            page.wait_for_url("**/jobs/*")
            job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])

            # the loss chart gains points while the job runs
            counts: list[int] = []
            statuses: list[str] = []
            deadline = time.monotonic() + DEMO_DEADLINE_S
            while time.monotonic() < deadline:
                state = page.evaluate(
                    "() => [document.getElementById('chart-loss').dataset.points,"
                    " document.getElementById('main').dataset.status]"
                )
                counts.append(int(state[0] or 0))
                statuses.append(state[1])
                if state[1] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            logs = page.locator("#logs").inner_text()
            assert statuses[-1] == "succeeded", f"the demo ended {statuses[-1]}; logs:\n{logs}"
            running = [c for c, s in zip(counts, statuses, strict=True) if s == "running"]
            growth = sorted(set(running))
            assert len(growth) >= 3, f"the loss chart did not grow while running: {counts}"
            assert counts == sorted(counts), f"the point count went backwards: {counts}"
            # after the end every stored loss point is drawn
            page.wait_for_function(
                "(n) => Number(document.getElementById('chart-loss').dataset.points) >= n", arg=max(counts)
            )
            api = httpx.get(f"{live_app}/api/jobs/{job_id}/metrics?keys=loss").json()
            drawn = int(page.evaluate("() => document.getElementById('chart-loss').dataset.points"))
            assert drawn == len(api["series"]["loss"])

            # the finished page: download offered, cancel gone, checkpoints listed and marked
            page.wait_for_selector('[data-action="download"]:not([hidden])')
            assert page.locator('[data-action="cancel"]').is_hidden()
            assert "checkpoint saved" in page.locator("#events-body").inner_text()
            assert page.evaluate("() => window.tuneboard.markers.some((m) => m.kind === 'checkpoint')")
            # times are formatted in the browser's zone, not left as the UTC fallback
            assert "UTC" not in page.locator("time").first.inner_text()
            cls = page.evaluate("() => window.__cls")
            print(f"cumulative layout shift on the detail page: {cls:.4f}")
            assert cls < 0.1, f"layout shifted while data arrived (CLS {cls:.3f})"
            page.screenshot(path=str(SCREENSHOTS / "job-detail.png"), full_page=True)

            # the list shows the finished job, and a new job appears and advances without a reload
            page.goto(live_app + "/")
            row = page.locator(f"#job-row-{job_id}")
            row.wait_for()
            assert row.get_attribute("data-status") == "succeeded"
            assert page.locator("#empty-state").is_hidden()
            second = httpx.post(f"{live_app}/api/jobs/demo").json()["id"]
            page.wait_for_function(
                "(id) => { const r = document.getElementById('job-row-' + id);"
                " return r && r.dataset.status === 'running'"
                " && Number(r.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) > 0; }",
                arg=second,
                timeout=DEMO_DEADLINE_S * 1000,
            )
            assert page.locator("#jobs-body tr").first.get_attribute("id") == f"job-row-{second}"
            page.wait_for_timeout(600)  # let the progress bars finish their width transition
            page.screenshot(path=str(SCREENSHOTS / "jobs-list.png"))

            # cancel from the detail page (htmx posts the form; the stream brings the final state)
            page.goto(f"{live_app}/jobs/{second}")
            page.click('[data-action="cancel"] button')
            page.wait_for_function(
                "() => document.getElementById('main').dataset.status === 'cancelled'",
                timeout=DEMO_DEADLINE_S * 1000,
            )
            page.wait_for_selector('[data-action="resume"]:not([hidden])')
            assert page.url.endswith(f"/jobs/{second}")

            # resume: the page listens again and follows the job back to running; then stop it for good
            page.click('[data-action="resume"] button')
            page.wait_for_function(
                "() => document.getElementById('main').dataset.status === 'running'",
                timeout=DEMO_DEADLINE_S * 1000,
            )
            page.click('[data-action="cancel"] button')
            page.wait_for_function(
                "() => document.getElementById('main').dataset.status === 'cancelled'",
                timeout=DEMO_DEADLINE_S * 1000,
            )
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            browser.close()
