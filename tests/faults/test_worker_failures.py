"""Faults 5 and 6, side by side in one app (two CPU slots) to save a start-up each:

- a full disk while checkpointing: the runs directory is a small tmpfs (mounting needs root or
  CAP_SYS_ADMIN, which CI has); one checkpoint of the tiny model (~480 KB) fits, the second does not;
- CUDA out of memory, raised on CPU by the worker's test hook at step OOM_STEP (the real GPU provocation
  belongs to a GPU machine). The disk-full job stops at step 6, before the hook's step, so only the
  other job meets it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import safe_open

from contract.protocol import ExitCode
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints
from tests.faults.harness import INJECT_OOM_ENV, REAL_WORKER, AppProcess, real_config

pytestmark = pytest.mark.training

RUNS_SIZE = "800k"
OOM_STEP = 7


@dataclass
class Failed:
    """The app and the two jobs, once both ended."""

    app: AppProcess
    disk_full: int
    oom: int


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory, preset_cache: Path) -> Iterator[Failed]:
    """Both jobs run to their end on an app whose runs/ is a size-limited tmpfs."""
    data = tmp_path_factory.mktemp("worker-failures") / "data"
    runs = data / "runs"
    runs.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={RUNS_SIZE}", "tmpfs", str(runs)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mounted.stderr.strip()}")
    env = {"TUNEBOARD_CACHE_DIR": str(preset_cache), INJECT_OOM_ENV: str(OOM_STEP)}
    app = AppProcess(data_dir=data, worker_module=REAL_WORKER, cpu_slots=2, extra_env=env)
    try:
        app.start()
        disk_full = app.submit(real_config(max_steps=9, save_steps=3))
        oom = app.submit(real_config(max_steps=10, save_steps=100, batch_size=2, max_seq_len=128))
        for job_id in (disk_full, oom):
            app.wait_terminal(job_id, timeout=120)
        yield Failed(app=app, disk_full=disk_full, oom=oom)
    finally:
        app.close()
        subprocess.run(["umount", "--lazy", str(runs)], check=False)


def test_a_full_disk_while_checkpointing_fails_clearly_and_keeps_the_earlier_checkpoint(
    failed: Failed,
) -> None:
    app, job_id = failed.app, failed.disk_full
    rd = app.run_dir(job_id)
    job = app.job(job_id)
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

    # the app is unharmed: it answers, its database works, it lists the jobs
    health = app.get("/api/health")
    assert health["ok"] is True and health["db"] == "ok"
    assert sorted(j["id"] for j in app.get("/api/jobs")) == sorted([failed.disk_full, failed.oom])


def test_cuda_out_of_memory_fails_the_job_as_out_of_gpu_memory_with_advice_naming_the_config(
    failed: Failed,
) -> None:
    app, job_id = failed.app, failed.oom
    job = app.job(job_id)
    outcome = json.loads(app.run_dir(job_id).outcome.read_text(encoding="utf-8"))
    assert outcome["status"] == "failed" and outcome["exit_code"] == ExitCode.OUT_OF_MEMORY
    assert job["status"] == "failed" and job["exit_code"] == ExitCode.OUT_OF_MEMORY
    reason = job["failure_reason"]
    assert reason == outcome["reason"]  # the worker's own advice, which names the values to change
    assert reason.startswith("out of GPU memory: ")
    assert "lower training.batch_size (now 2)" in reason and "training.max_seq_len (now 128)" in reason
    assert "OutOfMemoryError" in (job["stderr_tail"] or "")  # the traceback is there for the curious
    assert job["last_step"] == OOM_STEP - 1  # the steps before were trained and stored
