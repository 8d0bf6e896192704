"""A DPO run cancelled mid-way saves a checkpoint; resumed, its reward curve continues (same reference)."""

from __future__ import annotations

import os
import signal

import pytest

from contract.protocol import ExitCode, read_spool
from contract.rundir import complete_checkpoints
from tests.waiting import wait_until
from tests.worker.train.preference.test_preference_training import preference_config
from tests.worker.training_runs import new_run_dir, run_child, start_child
from worker.train.faults import INJECT_STEP_SLEEP_ENV

pytestmark = pytest.mark.training

STEPS = 12


def _last_step(events: object) -> int:
    return max((e["step"] for e in read_spool(events) if e["kind"] == "metric"), default=0)  # type: ignore[arg-type]


def test_a_cancelled_dpo_run_checkpoints_and_resumes_its_reward_curve() -> None:
    cfg = preference_config("dpo", beta=0.1)
    cfg["training"].update({"max_steps": STEPS, "save_steps": 100, "eval_steps": 0})
    rd = new_run_dir("dpo-cancel-resume", cfg)
    child = start_child(rd, **{INJECT_STEP_SLEEP_ENV: "0.3"})  # room to stop mid-way
    try:
        wait_until(lambda: _last_step(rd.events) >= 5, timeout=180, what="five DPO steps")
        os.kill(child.pid, signal.SIGTERM)  # what the app's cancel sends
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == ExitCode.CANCELLED
    before = read_spool(rd.events)
    (ckpt,) = complete_checkpoints(rd)  # saved by the cancel (save_steps is beyond the run)
    stopped_at = int(ckpt.name.split("-")[1])
    assert 5 <= stopped_at < STEPS
    margins_before = {
        e["step"]: e["payload"]["rewards/margins"] for e in before if "rewards/margins" in e["payload"]
    }

    finished = run_child(rd)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    after = [e for e in finished.events if e["seq"] > before[-1]["seq"]]
    margins_after = [
        (e["step"], e["payload"]["rewards/margins"]) for e in after if "rewards/margins" in e["payload"]
    ]
    assert [s for s, _ in margins_after] == list(range(stopped_at + 1, STEPS + 1))
    # the policy resumed from the checkpoint, the reference is still the base model: the margin keeps its
    # level (a reference taken from the resumed adapter would restart it at 0, as at step 1)
    assert abs(margins_before[1]) < 1e-3  # step 1: the policy is the reference (up to float rounding)
    assert margins_after[0][1] > 0.5 * margins_before[stopped_at] > 0, (margins_before, margins_after[:3])
