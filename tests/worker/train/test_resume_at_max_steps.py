"""Resuming a run whose newest checkpoint is its last step trains nothing more."""

from __future__ import annotations

import pytest

from contract.protocol import ExitCode
from contract.rundir import complete_checkpoints
from tests.worker.training_runs import demo_dict, new_run_dir, run_child

pytestmark = pytest.mark.training

STEPS = 4


def test_resuming_from_the_final_checkpoint_never_trains_past_max_steps() -> None:
    rd = new_run_dir("resume-final", demo_dict(max_steps=STEPS, save_steps=STEPS, eval_steps=0))
    first = run_child(rd)
    assert first.returncode == ExitCode.SUCCEEDED, first.stderr[-3000:]
    assert [p.name for p in complete_checkpoints(rd)][-1] == f"checkpoint-{STEPS}"
    last_seq = first.events[-1]["seq"]

    again = run_child(rd)

    assert again.returncode == ExitCode.SUCCEEDED, again.stderr[-3000:]
    after = [e for e in again.events if e["seq"] > last_seq]
    trained = [e["step"] for e in after if e["kind"] == "metric" and "loss" in e["payload"]]
    assert trained == [], f"a finished run trained again at steps {trained}"
    assert all(e["step"] <= STEPS for e in after), [e for e in after if e["step"] > STEPS]
    progress = [e["payload"] for e in after if e["kind"] == "progress"]
    assert all(p["step"] <= p["total_steps"] for p in progress), progress
    assert [p.name for p in complete_checkpoints(rd)] == [f"checkpoint-{STEPS}"]
    assert again.outcome["status"] == "succeeded"
