"""Try the adapter's parameters are checked before anything starts: plain 422 messages for each bad one,
a body cap on the POST variant, and no cross-site way to start a generation (GET or POST).

No model is needed: the checks answer before the job's adapter is even looked at, and the one accepted
request runs the never-ending stand-in (tests/fakes/endless_generate.py) only to see its arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.http import body_cap
from app.models import Task
from app.settings import Settings
from app.tasks.manager import TaskManager
from app.tasks.try_stream import MAX_SEED, STAGE_STARTING, STAGE_WAITING, TryInputError, parse_try_request
from tests.app.tasks.test_tasks_manager import ENDLESS, succeeded_job_with_adapter

PROMPT = "What is the capital of France?"
CAPS = {"max_prompt_chars": 100, "max_new_tokens_cap": 256}

BAD: list[tuple[dict[str, Any], str]] = [
    ({"temperature": -0.1}, "temperature is -0.1; it must be between 0 (greedy) and 2"),
    ({"temperature": 2.5}, "temperature is 2.5; it must be between 0 (greedy) and 2"),
    ({"temperature": "warm"}, "temperature must be a number, not 'warm'"),
    ({"temperature": "nan"}, "temperature must be a finite number"),
    ({"top_p": 0}, "top_p is 0; it must be above 0 and at most 1"),
    ({"top_p": 1.5}, "top_p is 1.5; it must be above 0 and at most 1"),
    ({"seed": -1}, f"seed is -1; it must be a whole number from 0 to {MAX_SEED}"),
    ({"seed": 1.5}, "seed must be a whole number, not 1.5"),
    ({"seed": "x"}, "seed must be a whole number, not 'x'"),
    ({"seed": True}, "seed must be a number, not True"),
    ({"max_new_tokens": 0}, "max_new_tokens is 0; it must be between 1 and 256"),
    ({"history": "[{"}, "history is not valid JSON"),
    ({"history": {"role": "user"}}, "history must be a JSON list"),
    ({"history": [{"role": "system", "content": "x"}]}, "history turn 0 has role 'system'"),
    ({"history": [{"role": "user", "content": 3}]}, "history turn 0's content must be a string"),
    ({"history": [{"role": "user", "content": "a"}]}, "history must end with the assistant's answer"),
    ({"history": [{"role": "assistant", "content": "a"}]}, "history turn 0 is 'assistant' where 'user'"),
    (
        {"history": [{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "y" * 20}]},
        "the prompt and the conversation so far have 110 characters; at most 100",
    ),
    ({"prompt": ""}, "prompt is required"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_each_bad_parameter_is_refused_with_a_plain_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TryInputError) as refused:
        parse_try_request({"prompt": PROMPT, **change}, **CAPS)
    assert message in str(refused.value)


def test_good_parameters_give_the_decoding_and_a_random_seed_only_when_sampling() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    prompt, turns, decoding = parse_try_request(
        {"prompt": PROMPT, "history": json.dumps(history), "temperature": "0.7", "top_p": "0.9", "seed": "3"},
        **CAPS,
    )
    assert (prompt, turns) == (PROMPT, history)
    assert (decoding.temperature, decoding.top_p, decoding.seed, decoding.max_new_tokens) == (0.7, 0.9, 3, 64)
    assert decoding.args()[-6:] == ["--temperature", "0.7", "--top-p", "0.9", "--seed", "3"]
    assert parse_try_request({"prompt": PROMPT}, **CAPS)[2].seed == 0  # greedy: the seed plays no part
    seeds = {parse_try_request({"prompt": PROMPT, "temperature": 1}, **CAPS)[2].seed for _ in range(5)}
    assert len(seeds) > 1  # sampled without a seed: a fresh one each time (reported back to the client)


def test_the_api_answers_422_with_the_message_for_get_and_post(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = succeeded_job_with_adapter(session_factory, tmp_path / "run")
    url = f"/api/jobs/{job_id}/try"
    answer = client.get(url, params={"prompt": "hi", "temperature": "3"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == "temperature is 3; it must be between 0 (greedy) and 2"
    answer = client.post(url, json={"prompt": "hi", "history": [{"role": "robot", "content": "x"}]})
    assert answer.status_code == 422 and "history turn 0 has role 'robot'" in answer.json()["detail"]
    answer = client.post(url, json={"prompt": "hi", "temprature": 1})
    assert answer.status_code == 422 and "unknown fields ['temprature']" in answer.json()["detail"]
    answer = client.post(
        url, content=b"prompt=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["detail"]


def test_the_post_body_has_a_cap_from_the_prompt_limit(
    client: TestClient, settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = succeeded_job_with_adapter(session_factory, tmp_path / "run")
    cap = body_cap(settings, "POST", f"/api/jobs/{job_id}/try")
    assert cap < 1024 * 1024 and cap >= 12 * settings.try_max_prompt_chars
    answer = client.post(
        f"/api/jobs/{job_id}/try",
        content=b"{" + b" " * cap + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and "the limit for this route" in answer.json()["detail"]


def test_a_cross_site_page_cannot_start_a_try_by_get_or_post(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = succeeded_job_with_adapter(session_factory, tmp_path / "run")
    url = f"/api/jobs/{job_id}/try"
    evil = {"Origin": "https://attacker.test", "Sec-Fetch-Site": "cross-site"}
    answer = client.get(url, params={"prompt": "hi"}, headers=evil)
    assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]
    answer = client.post(url, json={"prompt": "hi"}, headers=evil)
    assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]


def test_the_parameters_and_history_reach_the_process_and_a_stage_comes_first(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """What the app hands the generation process: the decoding arguments and a history file it wrote."""
    manager = TaskManager(client.app.state.settings)  # type: ignore[attr-defined]
    manager.try_module = ENDLESS
    client.app.state.tasks = manager  # type: ignore[attr-defined]
    run_dir = tmp_path / "run"
    job_id = succeeded_job_with_adapter(session_factory, run_dir)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    body = {"prompt": "and then?", "history": history, "temperature": 0.8, "top_p": 0.5, "seed": 11}
    events = []
    with client.stream("POST", f"/api/jobs/{job_id}/try", json=body) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("event: "):
                events.append(line[len("event: ") :])
            if line.startswith("data: ") and events[-1] == "stage":
                assert json.loads(line[len("data: ") :])["stage"] in (STAGE_WAITING, STAGE_STARTING)
            if events and events[-1] == "token":
                with session_factory() as session:
                    task = session.query(Task).filter(Task.job_id == job_id).one()
                    args = json.loads(task.args) if isinstance(task.args, str) else task.args
                    written = Path(args[args.index("--history-file") + 1])
                    assert json.loads(written.read_text(encoding="utf-8")) == history
                break
    assert events[:2] == ["decoding", "stage"]  # a stage before any token
    assert args[args.index("--temperature") + 1 :][:5] == ["0.8", "--top-p", "0.5", "--seed", "11"]
