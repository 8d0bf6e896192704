"""A run killed with SIGKILL resumes from its last complete checkpoint with the same step numbering."""

from __future__ import annotations

import os
import signal
from statistics import mean

import pytest

from contract.protocol import ExitCode, read_spool
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints
from tests.waiting import wait_until
from tests.worker.training_runs import demo_dict, new_run_dir, run_child, start_child

pytestmark = pytest.mark.training

STEPS = 20


def test_resume_after_kill_continues_the_step_count_and_the_loss_curve() -> None:
    rd = new_run_dir("resume", demo_dict(max_steps=STEPS, save_steps=5, eval_steps=0))
    child = start_child(rd)
    try:
        wait_until(
            lambda: (rd.checkpoints / "checkpoint-10" / CHECKPOINT_COMPLETE_MARKER).is_file(),
            timeout=120,
            what="checkpoint-10 to complete",
        )
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # no chance to clean up, like a lost machine
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not rd.outcome.exists()
    before = read_spool(rd.events)
    resumed_from = int(complete_checkpoints(rd)[-1].name.split("-")[1])
    assert resumed_from >= 10
    losses_before = {e["step"]: float(e["payload"]["loss"]) for e in before if "loss" in e["payload"]}
    # A save cut short by the kill: a directory without the marker, which must never be resumed from.
    torn = rd.checkpoints / f"checkpoint-{resumed_from + 1}"
    torn.mkdir(exist_ok=True)
    (torn / "adapter_model.safetensors").write_bytes(b"half a file")

    finished = run_child(rd)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    after = [e for e in finished.events if e["seq"] > before[-1]["seq"]]
    assert [e["seq"] for e in finished.events] == list(range(1, len(finished.events) + 1))
    steps_after = [e["step"] for e in after if e["kind"] == "metric" and "loss" in e["payload"]]
    assert steps_after[0] == resumed_from + 1
    assert steps_after == list(range(resumed_from + 1, STEPS + 1))
    status = [e for e in after if e["kind"] == "status"]
    assert status[0]["payload"]["total_steps"] == STEPS
    # The curve continues: the first resumed losses sit near the pre-kill ones, far below the start.
    losses_after = [float(e["payload"]["loss"]) for e in after if "loss" in e["payload"]]
    start = mean(losses_before[s] for s in range(1, 4))
    near_kill = mean(losses_before[s] for s in range(resumed_from - 2, resumed_from + 1))
    assert mean(losses_after[:3]) < 0.5 * (start + near_kill), (start, near_kill, losses_after[:3])
    assert finished.outcome["status"] == "succeeded"
    assert any(
        "incomplete checkpoint" in e["payload"].get("message", "") for e in after if e["kind"] == "log"
    )
    # save_total_limit 3 (the default): only the newest three complete checkpoints remain.
    assert [p.name for p in complete_checkpoints(rd)] == ["checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == [
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-20",
    ]
    assert (rd.adapter / "adapter_model.safetensors").is_file()
