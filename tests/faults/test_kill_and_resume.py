"""Faults 1 and 4, side by side in one app (two CPU slots, so their start-ups overlap):

- kill -9 of a training process between checkpoints → failed within seconds, "killed by signal 9" and
  the log tail; resume continues from the last complete checkpoint with the next step number;
- a kill in the middle of a checkpoint save (the worker's test hook SIGKILLs it after the files, before
  the COMPLETE marker, at step TORN) → that checkpoint is never offered; resume starts from the one before.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from contract.protocol import read_spool
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints, last_complete_checkpoint
from tests.faults.harness import (
    INJECT_KILL_BEFORE_MARKER_ENV,
    INJECT_STEP_SLEEP_ENV,
    REAL_WORKER,
    AppProcess,
    assert_stored_exactly_once,
    loss_steps,
    real_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.training

KILLED_STEPS, KILLED_SAVE = 20, 5  # saves 5, 10, 15, 20: never at TORN
TORN_STEPS, TORN_SAVE, TORN = 12, 4, 8
STEP_SLEEP_S = "0.05"  # room for the test to kill between checkpoints even on a fast machine
DETECT_BOUND_S = 5.0


def _messages(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["payload"].get("message", "")) for e in events if e["kind"] == "log"]


def test_kills_mid_step_and_mid_checkpoint_fail_fast_and_resume_from_the_last_complete_checkpoint(
    make_app: Callable[..., AppProcess],
) -> None:
    env = {INJECT_STEP_SLEEP_ENV: STEP_SLEEP_S, INJECT_KILL_BEFORE_MARKER_ENV: str(TORN)}
    app = make_app(worker_module=REAL_WORKER, cpu_slots=2, env=env)
    killed = app.submit(real_config(max_steps=KILLED_STEPS, save_steps=KILLED_SAVE))
    torn = app.submit(real_config(max_steps=TORN_STEPS, save_steps=TORN_SAVE))
    k_rd, t_rd = app.run_dir(killed), app.run_dir(torn)

    # --- fault 1: kill -9 from outside, mid-run, between checkpoints
    wait_until(
        lambda: (
            (k_rd.checkpoints / "checkpoint-10" / CHECKPOINT_COMPLETE_MARKER).is_file()
            and max(loss_steps(read_spool(k_rd.events)), default=0) >= 12
        ),
        timeout=120,
        what="checkpoint-10 and two more steps",
    )
    os.kill(app.worker_pid(killed), signal.SIGKILL)
    killed_at = time.monotonic()
    job = app.wait_job(killed, lambda j: j["status"] == "failed", timeout=15, what="failed after the kill")
    assert time.monotonic() - killed_at < DETECT_BOUND_S
    assert job["failure_reason"].startswith("killed by signal 9 (SIGKILL)")
    assert job["exit_code"] == -signal.SIGKILL
    tail = job["stderr_tail"] or ""
    assert f"attempt 1 of job {killed}" in tail, tail[-2000:]
    # the run's own log holds what it said up to the kill (library output goes there, not to stderr)
    assert "Training on cpu" in k_rd.full_log.read_text(encoding="utf-8")
    assert not k_rd.outcome.exists()  # the worker never got to say anything itself
    k_before = read_spool(k_rd.events)
    checkpoint = last_complete_checkpoint(k_rd)
    assert checkpoint is not None
    resumed_from = int(checkpoint.name.split("-")[1])
    assert 10 <= resumed_from < max(loss_steps(k_before)) < KILLED_STEPS
    # what the killed worker spooled but never sent is stored too (the app reads the spool after an exit)
    assert assert_stored_exactly_once(app, killed) == max(loss_steps(k_before))

    # --- fault 4: the hook's kill between a checkpoint's files and its marker
    job = app.wait_terminal(torn, timeout=120)
    assert job["status"] == "failed" and job["failure_reason"].startswith("killed by signal 9"), job
    torn_dir = t_rd.checkpoints / f"checkpoint-{TORN}"
    assert (torn_dir / "adapter_model.safetensors").is_file()  # the save had written its files...
    assert not (torn_dir / CHECKPOINT_COMPLETE_MARKER).exists()  # ...but not the marker
    assert [p.name for p in complete_checkpoints(t_rd)] == [f"checkpoint-{TORN_SAVE}"]
    t_before = read_spool(t_rd.events)
    assert f"checkpoints/checkpoint-{TORN}" not in [e["payload"].get("path") for e in t_before]

    # --- resume both
    for job_id in (killed, torn):
        app.post(f"/api/jobs/{job_id}/resume")
    for job_id, steps in ((killed, KILLED_STEPS), (torn, TORN_STEPS)):
        done = app.wait_terminal(job_id, timeout=150)
        assert done["status"] == "succeeded", done["failure_reason"]
        assert done["attempt"] == 2 and done["last_step"] == steps

    k_after = [e for e in read_spool(k_rd.events) if e["seq"] > k_before[-1]["seq"]]
    assert loss_steps(k_after) == list(range(resumed_from + 1, KILLED_STEPS + 1))  # no gap, no restart at 1
    assert any(f"resuming from checkpoint-{resumed_from}" in m for m in _messages(k_after))
    assert assert_stored_exactly_once(app, killed) == KILLED_STEPS  # one point per step, resumed values

    t_after = [e for e in read_spool(t_rd.events) if e["seq"] > t_before[-1]["seq"]]
    messages = _messages(t_after)
    assert any("incomplete checkpoint" in m and f"checkpoint-{TORN}" in m for m in messages), messages
    assert any(f"resuming from checkpoint-{TORN_SAVE}" in m for m in messages), messages
    assert loss_steps(t_after) == list(range(TORN_SAVE + 1, TORN_STEPS + 1))
    marker = json.loads((torn_dir / CHECKPOINT_COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert marker["step"] == TORN  # the re-trained step saved properly this time
    assert [p.name for p in complete_checkpoints(t_rd)] == [f"checkpoint-{s}" for s in (4, 8, 12)]
    assert assert_stored_exactly_once(app, torn) == TORN_STEPS
