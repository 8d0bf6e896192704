"""How a run ends, in words: the Outcome written to RUN_DIR/outcome.json and the classification of failures.

The supervisor reads outcome.json after the process exits; its exit code is a contract.protocol.ExitCode.
An unexpected exception becomes an outcome here: out of memory (with advice), quantization incompatible,
a model that cannot load, a full disk (after removing the checkpoint it tore), or "unexpected error".
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from contract.advice import oom_advice
from contract.config import JobConfig
from contract.protocol import ExitCode
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, RunDir, last_complete_checkpoint
from worker.train.log import say

LOW_DISK_BYTES = 16 * 1024**2  # a failed save with less free space than this was a full disk


class RunStopped(Exception):
    """A run ends early with a known exit code and a plain-words reason."""

    def __init__(self, code: ExitCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Outcome:
    """What outcome.json says."""

    code: ExitCode
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """succeeded | failed | cancelled."""
        if self.code == ExitCode.SUCCEEDED:
            return "succeeded"
        if self.code == ExitCode.CANCELLED:
            return "cancelled"
        return "failed"


def write_outcome(run_dir: RunDir, outcome: Outcome) -> None:
    """Write outcome.json atomically (the supervisor reads it after exit)."""
    body = {
        "status": outcome.status,
        "reason": outcome.reason,
        "exit_code": int(outcome.code),
        **outcome.extra,
    }
    tmp = run_dir.outcome.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2), encoding="utf-8")
    os.replace(tmp, run_dir.outcome)


def with_delivery_problem(outcome: Outcome, problem: str | None) -> Outcome:
    """A run whose events did not all reach the app does not succeed in silence: it fails, saying so."""
    if problem is None:
        return outcome
    say(f"tuneboard: {problem}")  # the events are what failed: stderr says it
    if outcome.code == ExitCode.SUCCEEDED:
        return Outcome(ExitCode.FAILED, f"{problem} (training itself finished: {outcome.reason})")
    return Outcome(outcome.code, f"{outcome.reason}; also {problem}", outcome.extra)


def classify_failure(exc: Exception, cfg: JobConfig | None) -> Outcome:
    """The outcome of a run that raised `exc` (`cfg` is None when the config itself did not load)."""
    import torch

    from worker.train.loading import ModelLoadError, QuantizationIncompatibleError

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        on_gpu = isinstance(exc, torch.cuda.OutOfMemoryError) or "cuda" in str(exc).lower()
        # the same words as the app's supervisor; without a config the tips name no current values
        return Outcome(ExitCode.OUT_OF_MEMORY, oom_advice(cfg, on_gpu=on_gpu))
    if isinstance(exc, QuantizationIncompatibleError):
        return Outcome(ExitCode.QUANTIZATION_INCOMPATIBLE, str(exc))
    if isinstance(exc, ModelLoadError):
        extra = {"problems": {exc.field: str(exc)}} if exc.field else {}
        return Outcome(ExitCode.CONFIG_ERROR, str(exc), extra)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Outcome(
        ExitCode.FAILED, f"unexpected error: {type(exc).__name__}: {first} (see stderr.log for the traceback)"
    )


def is_disk_full(exc: BaseException, rd: RunDir) -> bool:
    """True when `exc` or one behind it is ENOSPC/EDQUOT, or a checkpoint save failed on a full disk.

    torch.save reports a full disk as a bare RuntimeError ("unexpected pos ..."), with no errno to go
    by; a half-written checkpoint plus (almost) no space left on its filesystem says the same.
    """
    if _incomplete_checkpoint_on_a_full_disk(rd):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _incomplete_checkpoint_on_a_full_disk(rd: RunDir) -> bool:
    try:
        torn = [
            p
            for p in rd.checkpoints.iterdir()
            if p.name.startswith("checkpoint-") and not (p / CHECKPOINT_COMPLETE_MARKER).exists()
        ]
        return bool(torn) and shutil.disk_usage(rd.checkpoints).free < LOW_DISK_BYTES
    except OSError:
        return False


def disk_full_outcome(rd: RunDir) -> Outcome:
    """Remove the checkpoint the full disk interrupted (it is never resumable) and say what to do."""
    from worker.train.callbacks.checkpoints import remove_incomplete_checkpoints

    removed = sorted(remove_incomplete_checkpoints(rd), key=lambda p: p.name)
    last = last_complete_checkpoint(rd)
    kept = (
        f"; the earlier complete checkpoint checkpoints/{last.name} is intact and resume continues from it"
        if last is not None
        else "; no complete checkpoint exists yet, so resume starts over"
    )
    advice = "free disk space or lower training.save_total_limit, then resume"
    if removed:
        where = f"while saving checkpoint {removed[-1].name} in {rd.checkpoints}"
    else:
        where = f"while writing to {rd.root}"
    return Outcome(ExitCode.FAILED, f"no space left on device {where}: {advice}{kept}")
