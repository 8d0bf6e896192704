"""Fault 6: CUDA out of memory, provoked on CPU by the worker's test hook (a real GPU run is the lead's)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.faults.harness import INJECT_OOM_ENV, REAL_WORKER, AppProcess, real_config
from worker.protocol import ExitCode

pytestmark = pytest.mark.training


def test_cuda_out_of_memory_fails_the_job_as_out_of_gpu_memory_with_advice_naming_the_config(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(worker_module=REAL_WORKER, env={INJECT_OOM_ENV: "2"})
    job_id = app.submit(real_config(max_steps=6, save_steps=100, batch_size=2, max_seq_len=128))
    job = app.wait_terminal(job_id, timeout=90)

    outcome = json.loads(app.run_dir(job_id).outcome.read_text(encoding="utf-8"))
    assert outcome["status"] == "failed" and outcome["exit_code"] == ExitCode.OUT_OF_MEMORY
    assert job["status"] == "failed" and job["exit_code"] == ExitCode.OUT_OF_MEMORY
    reason = job["failure_reason"]
    assert reason == outcome["reason"]  # the worker's own advice, which names the values to change
    assert reason.startswith("out of GPU memory: ")
    assert "lower training.batch_size (now 2)" in reason and "training.max_seq_len (now 128)" in reason
    assert "OutOfMemoryError" in (job["stderr_tail"] or "")  # the traceback is there for the curious
    assert job["last_step"] == 1  # step 1 trained and was stored; step 2 ran out
