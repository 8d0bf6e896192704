"""The datasets pages in a real browser: a bad upload shows its problems by line, a good one opens its page
and htmx loads the preview. Saves docs/screenshots/datasets.png and dataset-preview.png."""

from __future__ import annotations

import json
import os
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
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """`uvicorn app.main:create_app` in its own process (scheduler off: no jobs here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = dict(os.environ, TUNEBOARD_DATA_DIR=str(tmp_path / "data"), TUNEBOARD_SCHEDULER_ENABLED="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {(tmp_path / 'uvicorn.log').read_text()}")
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


def test_uploading_from_the_page_shows_problems_then_the_preview(app_url: str, tmp_path: Path) -> None:
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

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            page.goto(app_url + "/datasets")
            assert page.locator("#datasets-body tr").count() == 3  # the presets
            page.set_input_files("#upload-file", str(bad))
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#upload-errors")
            problems = page.locator("#upload-errors table.problems tbody tr")
            assert problems.count() == 3
            assert (
                "line 2" in problems.nth(0).inner_text() and "not valid JSON" in problems.nth(0).inner_text()
            )
            assert "starts with an assistant turn" in problems.nth(1).inner_text()
            assert "both user turns" in problems.nth(2).inner_text()
            assert page.locator("#datasets-body tr").count() == 3  # nothing was stored

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
            assert page.locator("#preview-rows .seg-cut").count() == 1  # the long row, shown after the first 5
            page.screenshot(path=str(SCREENSHOTS / "dataset-preview.png"), full_page=True)

            page.goto(app_url + "/datasets")
            assert page.locator("#datasets-body tr").count() == 4
            assert "upload:" in page.locator("#datasets-body tr").first.inner_text()
            page.set_input_files("#upload-file", str(bad))
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#upload-errors")
            page.screenshot(path=str(SCREENSHOTS / "datasets.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
