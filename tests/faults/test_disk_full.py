"""Fault 5: the disk holding the run directories fills up while a checkpoint is being written.

The runs directory is a small tmpfs (mounting needs root or CAP_SYS_ADMIN, which CI has): one
checkpoint of the tiny model (~480 KB) fits, the second does not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.faults.harness import REAL_WORKER, AppProcess, real_config
from worker.protocol import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints

pytestmark = pytest.mark.training

RUNS_SIZE = "800k"


@pytest.fixture
def small_runs_dir(tmp_path: Path) -> Iterator[Path]:
    """DATA_DIR with a size-limited runs/ (tmpfs); unmounted afterwards."""
    data = tmp_path / "data-small"
    runs = data / "runs"
    runs.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={RUNS_SIZE}", "tmpfs", str(runs)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "--lazy", str(runs)], check=False)


def test_a_full_disk_while_checkpointing_fails_clearly_and_keeps_the_earlier_checkpoint(
    make_app: Callable[..., AppProcess], small_runs_dir: Path
) -> None:
    app = make_app(worker_module=REAL_WORKER, data_dir=small_runs_dir)
    job_id = app.submit(real_config(max_steps=9, save_steps=3))
    rd = app.run_dir(job_id)
    job = app.wait_terminal(job_id, timeout=90)

    assert job["status"] == "failed", job
    reason = job["failure_reason"]
    assert reason.startswith("no space left on device while saving checkpoint checkpoint-6"), reason
    assert "checkpoint-3 is intact and resume continues from it" in reason
    assert "free disk space" in reason
    outcome = json.loads(rd.outcome.read_text(encoding="utf-8"))  # the worker still had its say
    assert outcome["reason"] == reason

    # the earlier checkpoint is whole; the torn one is gone, so it can never be offered for resume
    assert [p.name for p in complete_checkpoints(rd)] == ["checkpoint-3"]
    assert not (rd.checkpoints / "checkpoint-6").exists()
    earlier = rd.checkpoints / "checkpoint-3"
    assert json.loads((earlier / CHECKPOINT_COMPLETE_MARKER).read_text())["step"] == 3
    assert json.loads((earlier / "trainer_state.json").read_text())["global_step"] == 3
    with safe_open(str(earlier / "adapter_model.safetensors"), framework="numpy") as weights:
        assert len(list(weights.keys())) > 0

    # the app is unharmed: it answers, its database works, it accepts and lists jobs
    health = app.get("/api/health")
    assert health["ok"] is True and health["db"] == "ok"
    assert [j["id"] for j in app.get("/api/jobs")] == [job_id]
