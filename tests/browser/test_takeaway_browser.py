"""Trying the adapter in a real browser: the prompt box streams both answers side by side on a finished job.
Saves docs/screenshots/try-adapter.png."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from app.jobs import service
from app.jobs.status import JobStatus
from app.main import create_app
from app.settings import Settings
from tests.worker.takeaway_run import mergeable_run, preset_cache_dir
from worker.config import parse_config

pytestmark = [pytest.mark.browser, pytest.mark.training]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FastAPI]]:
    """The app on a free loopback port in a thread (scheduler off), task children on the shared presets."""
    run = mergeable_run()
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(Settings(data_dir=tmp_path / "data", scheduler_enabled=False, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_the_prompt_box_streams_the_adapter_and_the_base_answers(
    served: tuple[str, FastAPI], tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    url, app = served
    run = mergeable_run()
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir.root, run_dir)
    config = json.loads(run.run_dir.config.read_text(encoding="utf-8"))
    config["name"] = "tiny Llama reverses words"
    with app.state.session_factory() as session:
        job = service.create_job(session, config=parse_config(config), config_text=json.dumps(config))
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.run_dir, job.adapter_path = str(run_dir), "adapter"
        service.transition(session, job=job, to=JobStatus.SUCCEEDED)
        session.commit()
        job_id = job.id

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/jobs/{job_id}")
            page.fill("#try-prompt", "Reverse the letters: tune")
            page.fill("#try-max-new-tokens", "8")
            page.click("#try-submit")
            assert page.locator("#try-submit").is_disabled()  # one generation at a time from this page
            page.wait_for_function(
                "!document.getElementById('try-submit').disabled", timeout=90_000
            )  # done (or failed): the button comes back
            assert page.locator("#try-error").is_hidden(), page.locator("#try-error").inner_text()
            for side in ("adapter", "base"):
                assert page.locator(f"#try-output-{side}").text_content(), f"no {side} answer"
            assert errors == []
            page.locator("#takeaway").screenshot(path=str(SCREENSHOTS / "try-adapter.png"))
        finally:
            browser.close()
