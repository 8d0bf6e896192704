"""Trying the adapter through the app with the real generation process on the shared tiny trained run:
stages before tokens (the first one at once), seeded sampling that repeats and differs from greedy, and a
conversation whose earlier turns reach the chat template."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.tasks.try_stream import STAGE_STARTING, STAGE_WAITING
from tests.app.tasks.test_takeaway import job_from_run, sse_events
from tests.worker.takeaway_run import mergeable_run, preset_cache_dir
from tests.worker.training_runs import FinishedRun
from worker.tasks.generate import STAGE_ANSWERING, STAGE_LOADING

pytestmark = pytest.mark.training
PROMPT = "Reverse the letters: tune"


@pytest.fixture(scope="module")
def run() -> FinishedRun:
    return mergeable_run()


@pytest.fixture(autouse=True)
def task_env(run: FinishedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def try_once(client: TestClient, job_id: int, body: dict[str, Any]) -> tuple[list[tuple[str, Any]], float]:
    """The SSE events of one try (POST), and the seconds until its first stage event."""
    started = time.monotonic()
    first_stage: float | None = None
    text = ""
    with client.stream("POST", f"/api/jobs/{job_id}/try", json=body) as answer:
        assert answer.status_code == 200, answer.read()
        for chunk in answer.iter_text():
            text += chunk
            if first_stage is None and "event: stage" in text:
                first_stage = time.monotonic() - started
    events = sse_events(text)
    assert events[-1] == ("done", {}), events[-3:]
    assert first_stage is not None
    return events, first_stage


def answers(events: list[tuple[str, Any]]) -> dict[str, str]:
    out = {"adapter": "", "base": ""}
    for name, data in events:
        if name == "token":
            out[data["side"]] += data["token"]
    return out


def test_stages_come_before_tokens_and_a_seed_makes_sampling_repeatable(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path)
    greedy_events, first_stage_s = try_once(client, job_id, {"prompt": PROMPT, "max_new_tokens": 12})
    assert first_stage_s < 1.0, f"the first stage came after {first_stage_s:.2f} s"
    names = [
        (name, data.get("stage") or data.get("side")) for name, data in greedy_events if name != "decoding"
    ]
    stages = [side for name, side in names if name == "stage"]
    assert stages[0] in (STAGE_WAITING, STAGE_STARTING)
    first_token = {side: names.index(("token", side)) for side in ("adapter", "base")}
    assert names.index(("stage", STAGE_LOADING)) < first_token["adapter"]
    assert names.index(("stage", STAGE_ANSWERING["adapter"])) < first_token["adapter"]
    assert first_token["adapter"] < names.index(("stage", STAGE_ANSWERING["base"])) < first_token["base"]
    assert greedy_events[0] == (
        "decoding",
        {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "seed": 0},
    )

    sampled = {"prompt": PROMPT, "max_new_tokens": 12, "temperature": 1.5, "top_p": 1.0, "seed": 1234}
    first, _ = try_once(client, job_id, sampled)
    again, _ = try_once(client, job_id, sampled)
    assert answers(first) == answers(again), "the same seed gave different samples"
    assert answers(first) != answers(greedy_events), "sampling at temperature 1.5 gave the greedy answer"


def test_a_conversations_earlier_turns_reach_the_chat_template(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path)
    events, _ = try_once(client, job_id, {"prompt": PROMPT, "max_new_tokens": 4})
    first = answers(events)
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first["adapter"]}]
    events, _ = try_once(
        client, job_id, {"prompt": "And now: board", "max_new_tokens": 4, "history": history}
    )
    assert all(answers(events).values())
    # try.log (the process's stderr) says how long each rendered prompt was
    said = re.findall(r"try: (\d+) prompt tokens, (\d+) earlier turn", (run_dir / "try.log").read_text())
    assert [int(turns) for _, turns in said] == [0, 1]
    alone = len(PROMPT)  # the second prompt alone would be about as long as the first
    assert int(said[1][0]) > int(said[0][0]) + alone // 4, said  # it carries the first turn too
