"""Test hooks: faults a test injects into a real training run through the environment. Never a lever.

tests/faults and tests/worker set these to reach paths a tiny CPU run never takes on its own; never set
them for real runs (tests/faults/harness.py names them again so the tests stay torch-free):

- TUNEBOARD_INJECT_NAN_AT_STEP=N (or "N,M,..."): the training loss of optimizer step N is multiplied by
  NaN, to exercise the divergence guard.
- TUNEBOARD_INJECT_OOM_AT_STEP=N: optimizer step N raises torch.cuda.OutOfMemoryError, to exercise the
  out-of-memory path on a machine without a GPU.
- TUNEBOARD_INJECT_STEP_SLEEP_S=0.2: every step sleeps that long, so a tiny run lasts long enough for a test
  to restart the app around it.
- TUNEBOARD_INJECT_KILL_BEFORE_MARKER_AT_STEP=N: the process SIGKILLs itself after checkpoint-N's files are
  written and before its COMPLETE marker, once per run directory (a relaunch passes step N again and must
  then save).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from contract.rundir import RunDir

INJECT_NAN_ENV = "TUNEBOARD_INJECT_NAN_AT_STEP"
INJECT_OOM_ENV = "TUNEBOARD_INJECT_OOM_AT_STEP"
INJECT_STEP_SLEEP_ENV = "TUNEBOARD_INJECT_STEP_SLEEP_S"
INJECT_KILL_BEFORE_MARKER_ENV = "TUNEBOARD_INJECT_KILL_BEFORE_MARKER_AT_STEP"


def nan_steps() -> set[int]:
    """The optimizer steps whose loss INJECT_NAN_ENV turns into NaN."""
    return _env_steps(INJECT_NAN_ENV)


def oom_steps() -> set[int]:
    """The optimizer steps INJECT_OOM_ENV makes run out of GPU memory."""
    return _env_steps(INJECT_OOM_ENV)


def step_sleep_s() -> float:
    """Seconds INJECT_STEP_SLEEP_ENV adds to every step (0: none)."""
    return float(os.environ.get(INJECT_STEP_SLEEP_ENV) or 0)


def injected_oom(step: int) -> Any:
    """The out-of-memory error INJECT_OOM_ENV raises in optimizer step `step`."""
    import torch

    return torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by {INJECT_OOM_ENV} at step {step})"
    )


def maybe_kill_before_marker(run_dir: RunDir, step: int) -> None:
    """The INJECT_KILL_BEFORE_MARKER_ENV hook: a kill in the middle of a checkpoint save."""
    if os.environ.get(INJECT_KILL_BEFORE_MARKER_ENV, "").strip() != str(step):
        return
    done = run_dir.root / f"injected-kill-before-marker-{step}"
    if done.exists():
        return
    done.write_text("killed once here by the test hook\n", encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)


def _env_steps(name: str) -> set[int]:
    raw = os.environ.get(name, "").strip()
    return {int(x) for x in raw.split(",") if x.strip().isdigit()}
