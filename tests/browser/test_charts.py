"""The charts of the job page and the compare page in a real browser against the real app: zoom (drag and
setScale) that every chart follows and live data keeps, a reset, a zoom into the tail of a long run read at
full resolution, smoothing, a log scale on every chart, kept per browser, and CSV/PNG of a chart.
The worker side is simulated at the seam we own: jobs moved to `starting` in the app's own database and
metric events POSTed with their worker token, as the training process reports them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.worker_side import metric, post, started_jobs

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

GRAD_NORM_IS_LOG = "window.tuneboard.charts.get('grad_norm').plot.scales.y.distr === 3"


def loss_at(step: int) -> float:
    return round(3.0 * math.exp(-step / 40) + 0.1 * math.sin(step), 6)


def x_scale(page: Page, chart: str) -> list[float]:
    return page.evaluate(
        "(id) => { const u = window.tuneboard.charts.get(id).plot;"
        " return [u.scales.x.min, u.scales.x.max]; }",
        chart,
    )


def wait_x(page: Page, chart: str, lo: float, hi: float) -> None:
    page.wait_for_function(
        "([id, lo, hi]) => { const p = window.tuneboard.charts.get(id).plot;"
        " return p && Math.abs(p.scales.x.min - lo) < 1e-6 && Math.abs(p.scales.x.max - hi) < 1e-6; }",
        arg=[chart, lo, hi],
        timeout=10_000,
    )


def test_job_page_zoom_is_shared_kept_live_and_reset(
    idle_app: str, chromium: Browser, tmp_path: Path
) -> None:
    (job_id,) = started_jobs(tmp_path / "data", ["zoom"])
    post(idle_app, job_id, [metric(s, s, loss=loss_at(s), grad_norm=1.0 + s / 10) for s in range(1, 61)])
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{idle_app}/jobs/{job_id}")
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '60'", timeout=15_000)
    reset = page.locator("#chart-reset-zoom")
    assert reset.is_hidden()
    # the live legend names the x axis and the series (tests/browser/test_journey.py reads it the same way)
    for chart in ("loss", "grad_norm"):
        legend = page.locator(f"#chart-{chart} .u-legend")
        assert legend.is_visible() and legend.locator(".u-series").count() >= 2
        assert "step" in legend.inner_text() and chart in legend.inner_text()

    # setScale from outside (as a script or a test would) zooms, and the other chart follows
    page.evaluate("() => window.tuneboard.charts.get('loss').plot.setScale('x', {min: 10, max: 20})")
    wait_x(page, "loss", 10, 20)
    wait_x(page, "grad_norm", 10, 20)
    reset.wait_for(state="visible", timeout=5_000)
    assert page.locator("#chart-loss").get_attribute("data-points") == "11"  # steps 10..20

    # live points keep the zoom
    post(idle_app, job_id, [metric(60 + s, 60 + s, loss=loss_at(60 + s), grad_norm=7.0) for s in range(1, 6)])
    page.wait_for_function("() => window.tuneboard.store.series.get('loss').xs.length === 65", timeout=15_000)
    page.wait_for_timeout(200)  # (one animation frame to draw: nothing should move)
    assert x_scale(page, "loss") == [10, 20]

    # the reset button returns to the whole run
    reset.click()
    page.wait_for_function(
        "() => { const u = window.tuneboard.charts.get('grad_norm').plot;"
        " return u.scales.x.min <= 1 && u.scales.x.max >= 65; }",
        timeout=5_000,
    )
    assert reset.is_hidden()

    # a drag across the chart zooms to the dragged range; a double-click goes back
    over = page.locator("#chart-loss .u-over")
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    reset.wait_for(state="visible", timeout=5_000)
    lo, hi = x_scale(page, "loss")
    full_lo, full_hi = 0, 65
    assert full_lo + 0.25 * (full_hi - full_lo) < lo < hi < full_lo + 0.65 * (full_hi - full_lo), (lo, hi)
    assert x_scale(page, "grad_norm") == [lo, hi]
    over.dblclick(position={"x": box["width"] * 0.5, "y": box["height"] / 2})
    reset.wait_for(state="hidden", timeout=5_000)
    lo, hi = x_scale(page, "loss")
    assert lo <= 1 and hi >= 65


def test_a_zoom_into_the_tail_of_a_long_run_shows_every_raw_point(
    idle_app: str, chromium: Browser, tmp_path: Path
) -> None:
    (job_id,) = started_jobs(tmp_path / "data", ["long"])
    steps = 5000
    for start in range(1, steps + 1, 1000):
        post(
            idle_app,
            job_id,
            [metric(s, s, loss=loss_at(s)) for s in range(start, min(start + 1000, steps + 1))],
        )
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{idle_app}/jobs/{job_id}")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) > 0", timeout=15_000)
    held = page.evaluate("() => window.tuneboard.store.series.get('loss').xs.filter((x) => x > 4980).length")
    assert held < 20  # the page's history is downsampled: the tail is not all there
    page.evaluate("() => window.tuneboard.charts.get('loss').plot.setScale('x', {min: 4981, max: 5000})")
    wait_x(page, "loss", 4981, 5000)
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '20'", timeout=15_000)
    shown = page.evaluate(
        "() => { const d = window.tuneboard.charts.get('loss').plot.data; const out = [];"
        " for (let i = 0; i < d[0].length; i++) if (d[0][i] >= 4981 && d[0][i] <= 5000 && d[1][i] != null)"
        " out.push([d[0][i], d[1][i]]); return out; }"
    )
    assert shown == [[s, loss_at(s)] for s in range(4981, 5001)]


def test_smoothing_log_scale_and_downloads_are_kept_per_browser(
    idle_app: str, chromium: Browser, tmp_path: Path
) -> None:
    (job_id,) = started_jobs(tmp_path / "data", ["habits"])
    events = [metric(s, s, loss=loss_at(s), grad_norm=1.0 + s) for s in range(1, 41)]
    events[19] = metric(20, 20, loss="nan", grad_norm=21.0)  # a NaN point: a gap, never smoothed away
    post(idle_app, job_id, events)
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{idle_app}/jobs/{job_id}")
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '39'", timeout=15_000)
    # every chart offers a log scale
    assert page.locator("[data-log-toggle]").count() == page.locator("#charts .chart").count() == 5

    page.locator("#chart-smoothing").fill("0.6")
    page.wait_for_function("window.tuneboard.charts.get('loss').plot.series.length === 3", timeout=5_000)
    data = page.evaluate("() => window.tuneboard.charts.get('loss').plot.data")
    xs, raw, smooth = data
    expected = page.evaluate("(ys) => window.TuneboardCharts.ema(ys, 0.6)", raw)
    assert smooth == expected
    i20 = xs.index(20)
    assert raw[i20] is None and smooth[i20] is None  # the NaN stays a gap in both lines
    # TensorBoard's debiased EMA: the first point is itself, then a weighted mean
    assert smooth[0] == pytest.approx(raw[0])
    assert smooth[1] == pytest.approx((0.6 * 0.4 * raw[0] + 0.4 * raw[1]) / (1 - 0.36))
    # the live legend names the smoothed and the raw value under the cursor
    over = page.locator("#chart-loss .u-over")
    box = over.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2)
    legend = page.locator("#chart-loss .u-legend")
    assert "(raw " in legend.inner_text()
    assert legend.is_visible()

    page.locator("#grad_norm-log").check()
    page.wait_for_function(
        "window.tuneboard.charts.get('grad_norm').plot.scales.y.distr === 3", timeout=5_000
    )
    page.locator("#learning_rate-log").check()  # no data there: the setting is still kept

    with page.expect_download() as info:
        page.locator('[data-chart-download="csv"][data-chart-id="loss"]').click()
    lines = Path(info.value.path()).read_text().splitlines()
    assert lines[0] == "step,loss,loss_smoothed"
    assert lines[1].split(",")[:2] == ["1", str(loss_at(1))]
    assert "20,nan,nan" in lines  # the NaN point, in both columns
    assert len(lines) == 41
    with page.expect_download() as info:
        page.locator('[data-chart-download="png"][data-chart-id="loss"]').click()
    png = Path(info.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    canvas = page.evaluate(
        "() => { const c = window.tuneboard.charts.get('loss').plot.ctx.canvas; return [c.width, c.height]; }"
    )
    assert width == canvas[0] and height > canvas[1]  # the plot and a title band over it

    # the settings are kept in this browser
    page.reload()
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '39'", timeout=15_000)
    assert page.locator("#chart-smoothing").input_value() == "0.6"
    assert page.locator("#grad_norm-log").is_checked() and not page.locator("#loss-log").is_checked()
    page.wait_for_function(
        "window.tuneboard.charts.get('grad_norm').plot.scales.y.distr === 3", timeout=5_000
    )
    context.close()


def test_compare_zoom_has_a_reset(idle_app: str, chromium: Browser, tmp_path: Path) -> None:
    ids = started_jobs(tmp_path / "data", ["a", "b"])
    for n, job_id in enumerate(ids):
        post(idle_app, job_id, [metric(s, s, loss=loss_at(s) + n) for s in range(1, 51)])
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{idle_app}/compare?ids={ids[0]},{ids[1]}&metric=loss")
    page.wait_for_function(
        "document.getElementById('compare-chart').dataset.points === '100'", timeout=15_000
    )
    reset = page.locator("#compare-reset-zoom")
    assert reset.is_hidden()
    page.evaluate("() => window.tuneboardCompare.plot.setScale('x', {min: 10, max: 20})")
    page.wait_for_function(
        "() => { const u = window.tuneboardCompare.plot;"
        " return u.scales.x.min === 10 && u.scales.x.max === 20; }",
        timeout=5_000,
    )
    reset.wait_for(state="visible", timeout=5_000)
    reset.click()
    page.wait_for_function(
        "() => { const u = window.tuneboardCompare.plot;"
        " return u.scales.x.min === 1 && u.scales.x.max === 50; }",
        timeout=5_000,
    )
    assert reset.is_hidden()
    # smoothing on compare: a faint raw line and the smoothed one per run
    page.locator("#compare-smoothing").fill("0.5")
    page.wait_for_function("window.tuneboardCompare.plot.series.length === 5", timeout=5_000)
    page.locator("#compare-log").check()
    page.wait_for_function("window.tuneboardCompare.plot.scales.y.distr === 3", timeout=5_000)
