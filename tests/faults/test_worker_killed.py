"""Fault 1: kill -9 of the training process mid-run, then resume from the last complete checkpoint."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.faults.harness import (
    INJECT_STEP_SLEEP_ENV,
    REAL_WORKER,
    AppProcess,
    assert_stored_exactly_once,
    loss_steps,
    real_config,
    wait_for,
)
from worker.protocol import CHECKPOINT_COMPLETE_MARKER, last_complete_checkpoint, read_spool

pytestmark = pytest.mark.training

STEPS = 24
SAVE_EVERY = 8
STEP_SLEEP_S = "0.05"  # room for the test to kill between checkpoints even on a fast machine
DETECT_BOUND_S = 5.0


def test_a_sigkilled_worker_fails_within_seconds_and_resume_continues_the_step_count(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(worker_module=REAL_WORKER, env={INJECT_STEP_SLEEP_ENV: STEP_SLEEP_S})
    job_id = app.submit(real_config(max_steps=STEPS, save_steps=SAVE_EVERY))
    rd = app.run_dir(job_id)
    wait_for(
        lambda: (
            (rd.checkpoints / f"checkpoint-{SAVE_EVERY}" / CHECKPOINT_COMPLETE_MARKER).is_file()
            and max(loss_steps(read_spool(rd.events)), default=0) >= SAVE_EVERY + 2
        ),
        timeout=90,
        what="a complete checkpoint and two more steps",
    )
    pid = app.worker_pid(job_id)
    os.kill(pid, signal.SIGKILL)  # mid-run, between checkpoints, with no chance to clean up
    killed_at = time.monotonic()

    job = app.wait_job(job_id, lambda j: j["status"] == "failed", timeout=15, what="failed after the kill")
    assert time.monotonic() - killed_at < DETECT_BOUND_S
    assert job["failure_reason"].startswith("killed by signal 9 (SIGKILL)")
    assert job["exit_code"] == -signal.SIGKILL
    tail = job["stderr_tail"] or ""
    assert f"attempt 1 of job {job_id}" in tail and "Loading weights" in tail, tail[-2000:]
    assert not rd.outcome.exists()  # the worker never got to say anything itself

    before = read_spool(rd.events)
    trained_before = max(loss_steps(before))
    checkpoint = last_complete_checkpoint(rd)
    assert checkpoint is not None
    resumed_from = int(checkpoint.name.split("-")[1])
    assert SAVE_EVERY <= resumed_from < trained_before < STEPS
    # what the killed worker spooled but never sent is stored too (the app reads the spool after an exit)
    assert assert_stored_exactly_once(app, job_id) == trained_before

    app.post(f"/api/jobs/{job_id}/resume")
    done = app.wait_job(job_id, lambda j: j["status"] in ("succeeded", "failed"), 120, "the resumed run")
    assert done["status"] == "succeeded", done["failure_reason"]
    assert done["attempt"] == 2 and done["last_step"] == STEPS

    after = [e for e in read_spool(rd.events) if e["seq"] > before[-1]["seq"]]
    assert loss_steps(after) == list(range(resumed_from + 1, STEPS + 1))  # no gap, no restart from 1
    messages = [e["payload"].get("message", "") for e in after if e["kind"] == "log"]
    assert any(f"resuming from checkpoint-{resumed_from}" in m for m in messages), messages
    assert assert_stored_exactly_once(app, job_id) == STEPS  # one loss point per step, the resumed values
