"""Bring-your-own-data fixtures train on preset:tiny-gemma3n with the loss falling: one short real run per
distinct path through the data code (chat with tool calls and weight-0 turns, converted ShareGPT with
function calls, TRL conversational prompt/completion, raw prompt/completion text, plain .txt)."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest

from contract.protocol import ExitCode
from tests.worker.training_runs import demo_dict, trained_run

pytestmark = pytest.mark.training

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
STEPS = 24


@pytest.mark.parametrize(
    ("name", "max_seq_len"),
    [
        ("openai_chat_tools.jsonl", 512),
        ("sharegpt.json", 512),
        ("prompt_completion_chat.jsonl", 64),
        ("prompt_completion.jsonl", 64),
        ("plain.txt", 64),
    ],
)
def test_the_fixture_trains_with_the_loss_falling(name: str, max_seq_len: int) -> None:
    config = demo_dict(
        max_steps=STEPS,
        batch_size=4,
        max_seq_len=max_seq_len,
        eval_steps=STEPS,
        save_steps=STEPS,
        learning_rate=1e-2,
    )
    config["dataset"] = {"source": str(FIXTURES / name), "eval_fraction": 0.1}
    run = trained_run(f"byod-{name.replace('.', '-')}", config)
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    losses = [loss for _, loss in run.losses()]
    assert len(losses) == STEPS
    assert mean(losses[-4:]) < 0.6 * mean(losses[:4]), losses
