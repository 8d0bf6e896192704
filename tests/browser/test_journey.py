"""A new user's whole journey in a real browser (Debian chromium through Playwright) against the real app:
uvicorn in its own process with the real scheduler and worker, two CPU slots, a temp data directory.

Empty dashboard → the demo from the form (keyboard and labels checked on the way) → its charts fill →
a second job cancelled, resumed, stopped → a 2-job sweep → compare → a bad dataset upload and its
line-numbered problems, then the fixed file and its preview → the adapter zip → try the adapter.
Times are checked in an emulated time zone (Asia/Kolkata, UTC+5:30, so a UTC fallback cannot pass).

With TUNEBOARD_SCREENSHOT_DIR set (docs/make_screenshots.py sets it) every page is also saved there in the
light and the dark colour scheme; CI leaves it unset to keep the run short.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

import httpx
import pytest

from contract.config import config_to_dict, demo_config
from tests.app_process import free_port, uvicorn_app
from tests.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.training]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEADLINE_S = 240  # every step is far faster alone; other tests may share the 2 cores
TIMEZONE = "Asia/Kolkata"  # a half-hour offset: no UTC or whole-hour mistake renders the same text
SWEEP_STEPS = 4  # the sweep's jobs: the demo with this many steps
SECOND_STEPS = 400  # the job that is cancelled and resumed: long enough to still run when cancelled

# sums the layout shifts the page suffers while data arrives (Chrome's Layout Instability API)
CLS_PROBE = """
window.__cls = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
}).observe({ type: "layout-shift", buffered: true });
"""


# records the browser notifications the page shows (the permission is granted to the app's origin)
NOTIFICATION_PROBE = """
window.__notifications = [];
const RealNotification = window.Notification;
function ProbeNotification(title, options) {
  window.__notifications.push(title);
  return new RealNotification(title, options);
}
ProbeNotification.requestPermission = (...args) => RealNotification.requestPermission(...args);
Object.defineProperty(ProbeNotification, "permission", { get: () => RealNotification.permission });
window.Notification = ProbeNotification;
"""


def screenshot_dir() -> Path | None:
    """Where to save the page screenshots, or None (the default: CI takes none)."""
    raw = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    return Path(raw) if raw else None


def shoot(page: Page, name: str, *, full_page: bool = True, element: str | None = None) -> None:
    """Save `name`.png (light) and `name`-dark.png (dark) when screenshots are asked for."""
    out = screenshot_dir()
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    schemes: tuple[tuple[Literal["light", "dark"], str], ...] = (("light", ""), ("dark", "-dark"))
    for scheme, suffix in schemes:
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(150)  # charts redraw their axes in the new colours
        path = str(out / f"{name}{suffix}.png")
        if element:
            page.locator(element).screenshot(path=path)
        else:
            page.screenshot(path=path, full_page=full_page)
    page.emulate_media(color_scheme="light")


def _chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[str]:
    """`uvicorn app.main:create_app` in its own process, real scheduler, 2 CPU slots, a free loopback port."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        TUNEBOARD_DATA_DIR=str(tmp_path / "data"),
        TUNEBOARD_HOST="127.0.0.1",
        TUNEBOARD_PORT=str(port),  # the worker reports to settings.app_url, built from host and port
        TUNEBOARD_SCHEDULER_ENABLED="true",
        TUNEBOARD_CPU_SLOTS="2",  # the sweep's two jobs train side by side
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    with uvicorn_app(env, port, tmp_path / "uvicorn.log") as url:
        yield url


def _expected_local(iso: str) -> str:
    """What `Intl.DateTimeFormat("en-US", {...})` in live.js prints for `iso` in TIMEZONE."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(TIMEZONE))
    return f"{dt:%b} {dt.day}, {dt.year}, {dt:%I:%M:%S %p}"


def _normal_spaces(text: str) -> str:
    return re.sub(r"[\s\u202f\u00a0]+", " ", text).strip()


def _wait_status(page: Page, status: str, timeout_s: float = DEADLINE_S) -> None:
    page.wait_for_function(
        "(s) => document.getElementById('main').dataset.status === s", arg=status, timeout=timeout_s * 1000
    )


def check_labels(page: Page) -> int:
    """Every visible form control on the page has an accessible name; returns how many were checked."""
    from playwright.sync_api import expect

    checked = 0
    for control in page.locator("input:not([type=hidden]), select, textarea").all():
        if control.is_visible():
            expect(control).to_have_accessible_name(re.compile(r"\w"))
            checked += 1
    return checked


def check_new_job_form_by_keyboard(page: Page) -> None:
    """Every control of the new-job form has an accessible name and Tab reaches each one in order."""
    from playwright.sync_api import expect

    # the advanced part (speed levers) is folded: open it as a user would, so its controls count too
    for summary in page.locator("#job-form details:not([open]) > summary").all():
        summary.click()
    controls = page.locator("#job-form :is(input, select, textarea):not([type=hidden])")
    # the fields of other training methods (preference tuning) are hidden until that method is chosen
    ids = controls.evaluate_all("(els) => els.filter((e) => e.checkVisibility()).map((e) => e.id)")
    assert any(i.startswith("f-speed-") for i in ids), "the speed levers are missing from the form"
    assert len(ids) >= 20, f"the form has too few inputs: {ids}"
    for input_id in ids:
        # Playwright computes the accessible name the way assistive technology does
        expect(page.locator(f"#{input_id}")).to_have_accessible_name(re.compile(r"\w"))
    page.locator("#paste-panel summary").focus()  # the control just before the form's first field
    reached: list[str] = []
    for _ in range(len(ids) * 2 + 10):
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.id")
        if focused in ids and focused not in reached:
            reached.append(focused)
        if focused == ids[-1]:
            break
    assert reached == ids, f"Tab order skipped or reordered fields: missing {set(ids) - set(reached)}"
    # typing into a focused field works without the mouse
    page.locator("#f-name").focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("demo from the keyboard")
    assert page.input_value("#f-name") == "demo from the keyboard"


def test_a_new_user_trains_compares_uploads_downloads_and_tries_in_the_browser(
    live_app: str, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    bad = tmp_path / "support-chats.jsonl"
    bad.write_text(
        _chat("How do I reset my password?", "Open Settings, then Security.") + "\n"
        '{"messages": [{"role": "user", "content": "hi"}\n'
        + json.dumps(
            {"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "x"}]}
        )
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
        + "\n",
        encoding="utf-8",
    )
    good = tmp_path / "reverse-words.jsonl"
    words = ["tuneboard", "adapter", "gemma", "quantize", "gradient", "checkpoint"]
    lines = [_chat(f"Reverse the letters: {w}", w[::-1]) for w in words]
    lines.append(_chat("Reverse every word of this paragraph: " + "lorem ipsum dolor " * 12, "merol " * 20))
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1366, "height": 900},
                timezone_id=TIMEZONE,
                locale="en-US",
                color_scheme="light",
                accept_downloads=True,
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.add_init_script(CLS_PROBE)
            page.add_init_script(NOTIFICATION_PROBE)
            context.grant_permissions(["notifications"], origin=live_app)
            started = time.monotonic()

            def mark(what: str) -> None:  # where the journey's time goes (pytest -s shows it)
                print(f"[journey] {time.monotonic() - started:6.1f} s  {what}")

            # 1. an empty dashboard offers the demo
            page.goto(live_app + "/")
            assert page.locator("#empty-state").is_visible()
            assert "No runs yet" in page.locator("#empty-state").inner_text()
            shoot(page, "dashboard-empty")
            # a job created elsewhere appears without a reload; this one asks for a GPU this machine lacks,
            # so the scheduler fails it at once with a reason (and it leaves the CPU slots to the demo)
            gpu_job_id = httpx.post(
                f"{live_app}/api/jobs", json={"name": "needs a GPU", "resources": {"gpus": 1}}
            ).json()["id"]
            page.wait_for_selector(f"#job-row-{gpu_job_id}")
            assert page.locator("#empty-state").is_hidden()
            assert page.locator("#jobs-table-wrap").is_visible()
            page.wait_for_function(
                f"() => document.getElementById('job-row-{gpu_job_id}').dataset.status === 'failed'"
            )
            # its creation time, rendered live by JavaScript, is in the browser's zone
            created = page.locator(f"#job-row-{gpu_job_id} time")
            created_iso = created.get_attribute("datetime")
            assert created_iso
            page.wait_for_function(
                f"() => document.querySelector('#job-row-{gpu_job_id} time').dataset.localized"
            )
            assert _normal_spaces(created.inner_text()) == _expected_local(created_iso)

            # its page says why it failed, and its empty charts say no data will come
            page.goto(f"{live_app}/jobs/{gpu_job_id}")
            assert "GPU" in page.locator("#failure-reason").inner_text()
            assert page.locator('[data-action="resume"]').is_visible()
            empty_chart = page.locator("#chart-loss .chart-empty")
            assert "ended before it reported any metrics" in empty_chart.inner_text()
            shoot(page, "job-failed", full_page=False)
            mark("empty dashboard, a failed GPU job, local times")
            # 2. the form, prefilled with the demo settings: labelled, reachable by Tab; the estimate
            # follows a change through htmx
            page.goto(live_app + "/jobs/new?preset=demo")
            check_new_job_form_by_keyboard(page)
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
            shoot(page, "job-new")
            # submitting with the keyboard: Enter in a text field submits the form
            page.locator("#f-name").press("Enter")
            page.wait_for_url("**/jobs/*")
            job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
            page.check("#notify-end")  # opt in: a browser notification when the run ends
            # a second, longer job queued from a terminal: it trains beside the demo (2 CPU slots) and is
            # cancelled and resumed later
            second_config = config_to_dict(demo_config())
            second_config["name"] = "second job: cancel and resume"
            second_config["training"]["max_steps"] = SECOND_STEPS
            second = httpx.post(f"{live_app}/api/jobs", json=second_config).json()["id"]

            mark("the form: labels, Tab order, estimate")
            # 3. the loss chart gains points while the demo runs
            counts: list[int] = []
            statuses: list[str] = []
            titles: list[str] = []

            def sample() -> list[str]:
                # every poll is also a sample: the chart's point count beside the job's status
                state: list[str] = page.evaluate(
                    "() => [document.getElementById('chart-loss').dataset.points,"
                    " document.getElementById('main').dataset.status, document.title]"
                )
                counts.append(int(state[0] or 0))
                statuses.append(state[1])
                titles.append(state[2])
                return state

            ended = ("succeeded", "failed", "cancelled")
            wait_until(sample, DEADLINE_S, "the demo job to end", 0.5, until=lambda state: state[1] in ended)
            logs = page.locator("#logs").inner_text()
            assert statuses[-1] == "succeeded", f"the demo ended {statuses[-1]}; logs:\n{logs}"
            running = [c for c, s in zip(counts, statuses, strict=True) if s == "running"]
            assert len(sorted(set(running))) >= 3, f"the loss chart did not grow while running: {counts}"
            assert counts == sorted(counts), f"the point count went backwards: {counts}"
            page.wait_for_function(  # after the end every stored loss point is drawn
                "(n) => Number(document.getElementById('chart-loss').dataset.points) >= n", arg=max(counts)
            )
            api = httpx.get(f"{live_app}/api/jobs/{job_id}/metrics?keys=loss").json()
            drawn = int(page.evaluate("() => document.getElementById('chart-loss').dataset.points"))
            assert drawn == len(api["series"]["loss"])
            assert page.locator("h1").first.inner_text().find("demo from the keyboard") >= 0
            # a background tab tells how the run went: progress in the title while it ran, then the outcome;
            # the run's duration is shown; the opted-in notification came once
            assert any(re.match(r"\d+% · running · #", t) for t in titles), titles
            page.wait_for_function("() => document.title.startsWith('✓ succeeded · #')")
            assert re.fullmatch(r"\d+ s|\d+ min \d+ s", page.locator("#job-duration").inner_text()), (
                page.locator("#job-duration").inner_text()
            )
            notes = page.evaluate("() => window.__notifications")
            assert notes == [f"#{job_id} demo from the keyboard: succeeded"], notes

            # the finished page: download offered, cancel gone, checkpoints listed and marked
            page.wait_for_selector('[data-action="download"]:not([hidden])')
            assert page.locator('[data-action="cancel"]').is_hidden()
            assert "checkpoint saved" in page.locator("#events-body").inner_text()
            assert page.evaluate("() => window.tuneboard.markers.some((m) => m.kind === 'checkpoint')")
            # every chart names its axes' units through a legend: the series labels are drawn
            legend = page.locator("#chart-loss .u-legend").inner_text()
            assert "loss" in legend.lower(), f"the loss chart has no legend: {legend!r}"
            # every chart has a legend naming its x axis and at least one series
            legends = page.locator("#charts .chart").evaluate_all(
                "(cs) => cs.map((c) => [c.id, c.querySelectorAll('.u-legend .u-series').length,"
                " c.querySelector('.u-legend')?.textContent || ''])"
            )
            assert len(legends) == 5, legends
            for chart_id, entries, text in legends:
                assert entries >= 2 and "step" in text, f"{chart_id} has no readable legend: {text!r}"
                # with no cursor on the chart the values read "—", not a NaN that is not there
                assert "NaN" not in text, f"{chart_id}'s legend claims NaN without a cursor: {text!r}"
            # event times are in the browser's zone
            event_time = page.locator("#events-body time").first
            page.wait_for_function("() => document.querySelector('#events-body time').dataset.localized")
            iso = event_time.get_attribute("datetime")
            assert iso and _normal_spaces(event_time.inner_text()) == _expected_local(iso)
            cls = page.evaluate("() => window.__cls")
            print(f"cumulative layout shift on the detail page: {cls:.4f}")
            assert cls < 0.1, f"layout shifted while data arrived (CLS {cls:.3f})"
            shoot(page, "job-detail")

            mark("the demo trained and its page checked")
            # 4. the list shows the finished job, and the second job advances without a reload
            page.goto(live_app + "/")
            row = page.locator(f"#job-row-{job_id}")
            row.wait_for()
            assert row.get_attribute("data-status") == "succeeded"
            progress = f"#job-row-{second} [role=progressbar]"
            shown = float(page.locator(progress).get_attribute("aria-valuenow") or 0)
            page.wait_for_function(
                "([id, shown]) => { const r = document.getElementById('job-row-' + id);"
                " return r && r.dataset.status === 'running'"
                " && Number(r.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) > shown; }",
                arg=[second, shown],
                timeout=DEADLINE_S * 1000,
            )
            assert page.locator("#jobs-body tr").first.get_attribute("id") == f"job-row-{second}"
            assert check_labels(page) >= 3  # one "select to compare" box per job
            list_cls = page.evaluate("() => window.__cls")
            assert list_cls < 0.1, f"the jobs list shifted while rows updated (CLS {list_cls:.3f})"
            page.wait_for_timeout(600)  # let the progress bars finish their width transition
            shoot(page, "jobs-list", full_page=False)

            # cancel from the detail page (htmx posts the form; the stream brings the final state)
            page.goto(f"{live_app}/jobs/{second}")
            page.click('[data-action="cancel"] button')
            _wait_status(page, "cancelled")
            page.wait_for_selector('[data-action="resume"]:not([hidden])')
            assert page.url.endswith(f"/jobs/{second}")
            shoot(page, "job-cancelled", full_page=False)
            # resume: the page listens again and follows the job back to running; then stop it for good
            page.click('[data-action="resume"] button')
            _wait_status(page, "running")
            page.click('[data-action="cancel"] button')
            _wait_status(page, "cancelled")

            mark("second job cancelled, resumed, cancelled")
            # 5. a sweep of the demo: two learning rates, each with SWEEP_STEPS steps (the second field)
            page.goto(f"{live_app}/jobs/{job_id}")
            # the finished run's logs open at their newest line, and say it ended
            page.wait_for_function(
                "() => { const l = document.getElementById('logs');"
                " return l.scrollTop + l.clientHeight >= l.scrollHeight - 8; }"
            )
            assert page.evaluate("() => document.getElementById('logs').scrollHeight") > page.evaluate(
                "() => document.getElementById('logs').clientHeight"
            ), "the demo's logs fit the panel: this check would not see a panel opening at the top"
            page.click("#sweep summary")
            page.select_option("#sweep-field1", "training.learning_rate")
            page.fill("#sweep-values1", "0.005, 0.002")
            page.select_option("#sweep-field2", "training.max_steps")
            page.fill("#sweep-values2", str(SWEEP_STEPS))
            assert check_labels(page) >= 7  # the sweep's 4 fields and the try-the-adapter form
            page.click("#sweep-form button[type=submit]")
            page.wait_for_url("**/groups/*")
            members = page.locator("#compare-summary tbody tr")
            assert members.count() == 2
            member_ids = [int(v) for v in members.evaluate_all("(rs) => rs.map((r) => r.dataset.run)")]

            mark("sweep queued")
            # 6. while the sweep trains: the dataset upload, first with mistakes, then fixed
            page.goto(live_app + "/datasets")
            presets = page.locator("#datasets-body tr").count()
            assert presets >= 3  # the preset datasets
            page.set_input_files("#upload-file", str(bad))
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#upload-errors")
            problems = page.locator("#upload-errors table.problems tbody tr")
            assert problems.count() == 3
            first_problem = problems.nth(0).inner_text()
            assert "line 2" in first_problem and "not valid JSON" in first_problem
            assert "starts with an assistant turn" in problems.nth(1).inner_text()
            assert "both user turns" in problems.nth(2).inner_text()
            assert page.locator("#datasets-body tr").count() == presets  # nothing was stored
            assert check_labels(page) >= 2  # the file and its name
            shoot(page, "datasets")

            page.set_input_files("#upload-file", str(good))
            page.fill("#upload-name", "Reverse words")
            page.click("#upload-form button[type=submit]")
            page.wait_for_url("**/datasets/*?uploaded=1")
            page.wait_for_selector("#preview-summary", timeout=120_000)  # htmx loads it after the page
            summary = page.locator("#preview-summary")
            # the demo's max_seq_len (128): the long paragraph row goes past it
            assert summary.get_attribute("data-total") == "7"
            assert summary.get_attribute("data-over-max") == "1"
            assert page.locator("#preview-rows li").count() == 6  # the first 5 and the one past max_seq_len

            def show(max_seq_len: int, over: int) -> None:
                page.fill("#preview-len", str(max_seq_len))
                page.click("#preview-form button[type=submit]")  # htmx swaps the preview in place
                page.wait_for_function(
                    "(n) => document.getElementById('preview-summary')?.dataset.overMax === n",
                    arg=str(over),
                    timeout=120_000,
                )

            show(512, 0)
            show(128, 1)
            assert "/datasets/" in page.url and "uploaded=1" in page.url  # no navigation happened
            # the long row, shown after the first 5
            assert page.locator("#preview-rows .seg-cut").count() == 1
            assert check_labels(page) >= 2  # model and max_seq_len of the preview
            shoot(page, "dataset-preview")
            page.goto(live_app + "/datasets")
            assert page.locator("#datasets-body tr").count() == presets + 1
            assert "upload:" in page.locator("#datasets-body tr").first.inner_text()

            mark("dataset refused by line, then stored and previewed")
            # 7. the adapter zip from the demo's page
            page.goto(f"{live_app}/jobs/{job_id}")
            with page.expect_download() as download_info:
                page.click('[data-action="download"]')
            download = download_info.value
            assert download.suggested_filename == f"tuneboard-job-{job_id}-adapter.zip"
            with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as zf:
                names = set(zf.namelist())
                assert zf.testzip() is None, "a member of the adapter zip is corrupt"
                adapter_config = json.loads(zf.read("adapter_config.json"))
            assert {"adapter_model.safetensors", "adapter_config.json"} <= names, names
            assert adapter_config["r"] == 16  # the demo's LoRA rank
            assert page.locator("#merge-export").count() == 1  # the merged-model box is drawn once

            mark("adapter zip checked")
            # 8. try the adapter: both answers stream side by side
            page.fill("#try-prompt", "What is the capital of France?")
            page.fill("#try-max-new-tokens", "6")
            page.click("#try-submit")
            assert page.locator("#try-submit").is_disabled()  # one generation at a time from this page
            page.wait_for_function(
                "!document.getElementById('try-submit').disabled", timeout=120_000
            )  # done (or failed): the button comes back
            assert page.locator("#try-error").is_hidden(), page.locator("#try-error").inner_text()
            for side in ("adapter", "base"):
                assert page.locator(f"#try-output-{side}").text_content(), f"no {side} answer"
            shoot(page, "try-adapter", element="#takeaway")

            mark("both answers of try-the-adapter streamed")
            # 9. the sweep's group page follows both jobs to the end; then compare the demo with one of them
            page.goto(f"{live_app}/jobs/{member_ids[0]}")  # a member's page links to its group
            page.click("#group-link")
            page.wait_for_url("**/groups/*")
            for member in member_ids:
                page.wait_for_function(
                    "(id) => document.getElementById('compare-row-' + id).dataset.status === 'succeeded'",
                    arg=member,
                    timeout=DEADLINE_S * 1000,
                )
            page.wait_for_function(
                "(n) => Number(document.getElementById('compare-chart').dataset.points) >= n",
                arg=2 * SWEEP_STEPS,
            )
            shoot(page, "sweep-group")

            mark("sweep finished on its group page")
            page.goto(live_app + "/")
            page.check(f"#job-row-{job_id} input[data-field=select]")
            page.check(f"#job-row-{member_ids[0]} input[data-field=select]")
            page.click("#compare-button")
            page.wait_for_url("**/compare?ids=*")
            assert f"ids={min(job_id, member_ids[0])},{max(job_id, member_ids[0])}" in page.url
            page.wait_for_function(
                "(n) => Number(document.getElementById('compare-chart').dataset.points) >= n",
                arg=len(api["series"]["loss"]) + SWEEP_STEPS,
            )
            legend_items = page.locator("#compare-legend li")
            legend_runs = legend_items.evaluate_all("(ls) => ls.map((l) => l.dataset.run)")
            assert sorted(map(int, legend_runs)) == sorted([job_id, member_ids[0]])
            assert check_labels(page) >= 2  # metric and x axis
            compare_cls = page.evaluate("() => window.__cls")
            assert compare_cls < 0.1, (
                f"the compare page shifted while its curves loaded (CLS {compare_cls:.3f})"
            )
            shoot(page, "compare")

            mark("compare page")
            # a page that does not exist says so, in both schemes
            missing = page.goto(f"{live_app}/jobs/999999")
            assert missing is not None and missing.status == 404
            shoot(page, "not-found", full_page=False)
            mark("not-found page")
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            browser.close()
