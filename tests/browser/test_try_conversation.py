"""Try the adapter in a real browser against the real app and the real generation process (the shared tiny
trained run): the stage the try is in shows where the answer will appear within a second and before the
first token, a second prompt continues the conversation with both turns on the page, and "New
conversation" forgets it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from app.db import make_engine, make_session_factory
from app.jobs import service
from app.jobs.status import JobStatus
from contract.config import parse_config
from tests.app_process import free_port, uvicorn_app
from tests.worker.takeaway_run import mergeable_run, preset_cache_dir

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.training]

SERVER_STAGES = (
    "waiting for a free CPU/GPU slot",
    "starting the generation process",
    "loading the base model and the adapter",
    "answering with the adapter",
)
# what the adapter's answer box shows over time: [ms since submit, is it a stage, its text]
WATCH = """() => {
  window.__tryLog = [];
  const box = document.getElementById('try-output-adapter');
  const note = () => window.__tryLog.push(
    [performance.now() - window.__trySent, box.classList.contains('is-stage'), box.textContent]);
  new MutationObserver(note).observe(box, {childList: true, characterData: true, subtree: true,
                                          attributes: true});
  document.addEventListener('submit', () => { window.__trySent = performance.now(); }, true);
}"""


def succeeded_job(data_dir: Path, tmp_path: Path) -> int:
    """A succeeded job in the app's own database whose run directory is a copy of the shared trained run."""
    run = mergeable_run()
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir.root, run_dir)
    config = json.loads(run.run_dir.config.read_text(encoding="utf-8"))
    engine = make_engine(f"sqlite:///{data_dir / 'tuneboard.db'}")
    try:
        with make_session_factory(engine)() as session:
            job = service.create_job(session, config=parse_config(config), config_text=json.dumps(config))
            service.transition(session, job=job, to=JobStatus.STARTING)
            job.run_dir = str(run_dir)
            job.attempt = 1
            service.transition(session, job=job, to=JobStatus.SUCCEEDED)
            session.commit()
            return job.id
    finally:
        engine.dispose()


def ask(page: Page, prompt: str) -> list[list[Any]]:
    """Ask `prompt`, wait for both answers, and return what the adapter's box showed meanwhile."""
    page.evaluate("() => { window.__tryLog = []; }")
    page.fill("#try-prompt", prompt)
    page.click("#try-submit")
    page.wait_for_function("!document.getElementById('try-submit').disabled", timeout=120_000)
    assert page.locator("#try-error").is_hidden(), page.locator("#try-error").inner_text()
    for side in ("adapter", "base"):
        assert page.locator(f"#try-output-{side}").text_content(), f"no {side} answer"
    log: list[list[Any]] = page.evaluate("() => window.__tryLog")
    return log


def test_a_conversation_keeps_both_turns_and_shows_the_stage_before_the_first_token(
    chromium: Browser, tmp_path: Path
) -> None:
    run = mergeable_run()
    port = free_port()
    env = dict(os.environ)
    env.update(
        TUNEBOARD_DATA_DIR=str(tmp_path / "data"),
        TUNEBOARD_HOST="127.0.0.1",
        TUNEBOARD_PORT=str(port),
        TUNEBOARD_SCHEDULER_ENABLED="false",
        TUNEBOARD_CACHE_DIR=str(preset_cache_dir(run)),
        OMP_NUM_THREADS="1",
    )
    with uvicorn_app(env, port, tmp_path / "uvicorn.log") as url:
        job_id = succeeded_job(tmp_path / "data", tmp_path)
        page = chromium.new_page()
        page.goto(f"{url}/jobs/{job_id}")
        page.evaluate(WATCH)
        page.fill("#try-max-new-tokens", "6")
        log = ask(page, "Reverse the letters: tune")

        # the box said which stage the try was in before any token, the server's first stage within 1 s
        first_token = next(i for i, (_, stage, text) in enumerate(log) if not stage and text)
        server = [
            (ms, text) for ms, stage, text in log[:first_token] if stage and text.rstrip("…") in SERVER_STAGES
        ]
        assert server, f"no server stage shown before the first token: {log[:first_token]}"
        assert server[0][0] < 1000, f"the first stage showed after {server[0][0]:.0f} ms"
        # each stage shown came in the server's order ("answering with the adapter" can be overtaken by the
        # first token in the same read, so it may not be painted; the stream's order is checked in
        # tests/app/tasks/test_try_conversation.py)
        shown = [text.rstrip("…") for _, text in server]
        assert shown == sorted(shown, key=SERVER_STAGES.index), shown
        first_answer = page.locator("#try-output-adapter").text_content()

        # a second prompt continues the conversation: the first turn moves into the log, both are shown
        page.fill("#try-temperature", "1")
        page.fill("#try-seed", "5")
        ask(page, "And now: board")
        turns = page.locator("#try-conversation .try-turn")
        assert turns.count() == 1
        assert turns.nth(0).locator(".try-user").inner_text() == "Reverse the letters: tune"
        assert turns.nth(0).locator(".try-output-adapter").text_content() == first_answer
        assert page.locator("#try-current-prompt").inner_text() == "And now: board"
        assert "seed 5" in page.locator("#try-decoding").inner_text()

        # a new conversation forgets both turns
        page.click("#try-new")
        assert page.locator("#try-conversation .try-turn").count() == 0
        assert page.locator("#try-current-prompt").is_hidden()
        assert page.locator("#try-new").is_disabled()
