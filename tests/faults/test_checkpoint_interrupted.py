"""Fault 4: a kill in the middle of a checkpoint save; that checkpoint is never offered for resume."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.faults.harness import (
    INJECT_KILL_BEFORE_MARKER_ENV,
    REAL_WORKER,
    AppProcess,
    assert_stored_exactly_once,
    loss_steps,
    real_config,
)
from worker.protocol import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints, read_spool

pytestmark = pytest.mark.training

STEPS = 12
SAVE_EVERY = 4
TORN = 8  # the save the hook interrupts: files written, marker not


def test_a_checkpoint_torn_by_a_kill_is_skipped_and_resume_starts_from_the_one_before(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(worker_module=REAL_WORKER, env={INJECT_KILL_BEFORE_MARKER_ENV: str(TORN)})
    job_id = app.submit(real_config(max_steps=STEPS, save_steps=SAVE_EVERY))
    rd = app.run_dir(job_id)
    job = app.wait_terminal(job_id, timeout=90)
    assert job["status"] == "failed" and job["failure_reason"].startswith("killed by signal 9"), job

    torn = rd.checkpoints / f"checkpoint-{TORN}"
    assert (torn / "adapter_model.safetensors").is_file()  # the save had written its files...
    assert not (torn / CHECKPOINT_COMPLETE_MARKER).exists()  # ...but not the marker
    assert [p.name for p in complete_checkpoints(rd)] == [f"checkpoint-{SAVE_EVERY}"]
    before = read_spool(rd.events)
    assert f"checkpoints/checkpoint-{TORN}" not in [e["payload"].get("path") for e in before]

    app.post(f"/api/jobs/{job_id}/resume")
    done = app.wait_terminal(job_id, timeout=120)
    assert done["status"] == "succeeded", done["failure_reason"]

    after = [e for e in read_spool(rd.events) if e["seq"] > before[-1]["seq"]]
    messages = [e["payload"].get("message", "") for e in after if e["kind"] == "log"]
    assert any("incomplete checkpoint" in m and f"checkpoint-{TORN}" in m for m in messages), messages
    assert any(f"resuming from checkpoint-{SAVE_EVERY}" in m for m in messages), messages
    assert loss_steps(after) == list(range(SAVE_EVERY + 1, STEPS + 1))
    # the re-trained step TORN saved properly this time
    marker = json.loads((torn / CHECKPOINT_COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert marker["step"] == TORN
    assert [p.name for p in complete_checkpoints(rd)] == [f"checkpoint-{s}" for s in (4, 8, 12)]
    assert assert_stored_exactly_once(app, job_id) == STEPS
