"""Text contrast in a real browser, light and dark scheme: status badges, event kinds, warnings, links and
muted text on the surfaces they sit on reach WCAG AA's 4.5:1 for normal text. In the light scheme several were
3.9–4.4:1 (the running/succeeded badges on their tinted backgrounds, the checkpoint and guard kinds)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

STATUSES = ("queued", "starting", "running", "succeeded", "failed", "cancelling", "cancelled")
KINDS = ("checkpoint", "guard", "preflight", "info")
SAMPLE = (
    '<main><div class="panel">'
    + "".join(f'<span class="badge badge-{s}">{s}</span>' for s in STATUSES)
    + "".join(f'<span class="kind kind-{k}">{k}</span>' for k in KINDS)
    + '<a href="#">a link</a><span class="muted">muted text</span><span class="sub">sub text</span>'
    + '<table class="events"><tr class="level-warning"><td class="ev-text">a warning</td></tr>'
    + '<tr class="level-error"><td class="ev-text">an error</td></tr></table>'
    + "</div><p>a link on the page: <a href='#'>link</a> <span class='muted'>muted</span></p></main>"
)
CONTRAST_JS = """
() => {
  const parse = (c) => {
    const probe = document.createElement("canvas").getContext("2d");
    probe.fillStyle = "#000"; probe.fillStyle = c; probe.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = probe.getImageData(0, 0, 1, 1).data;
    return [r, g, b, a / 255];
  };
  const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3]));
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let rgb = [255, 255, 255];
    for (const layer of layers.reverse()) rgb = over(layer, rgb);
    return rgb;
  };
  const lum = (rgb) => {
    const linear = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    const [r, g, b] = rgb.map(linear);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  return [...document.querySelectorAll(".badge, .kind, a, .muted, .sub, .ev-text")].map((el) => {
    const bg = background(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return [el.className || el.tagName, el.textContent, (hi + 0.05) / (lo + 0.05)];
  });
}
"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_reaches_4_5_to_1(idle_app: str, chromium: Browser, scheme: Literal["light", "dark"]) -> None:
    page = chromium.new_page(color_scheme=scheme)
    page.goto(idle_app + "/")  # the app's own stylesheet, then a sample of every coloured text style
    page.evaluate("html => { document.body.innerHTML = html; }", SAMPLE)
    ratios = page.evaluate(CONTRAST_JS)
    assert len(ratios) >= len(STATUSES) + len(KINDS) + 5
    low = [(cls, text, round(ratio, 2)) for cls, text, ratio in ratios if ratio < 4.5]
    assert low == [], f"{scheme}: below 4.5:1: {low}"
