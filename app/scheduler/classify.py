"""Turn how a training process ended into a final status and a reason in plain words.

Inputs: the exit code or signal, RUN_DIR/outcome.json (the worker's own account, written last), the
stderr tail, and whether the supervisor itself stopped the process (cancel, deadline, hang).
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.jobs.status import JobStatus
from app.scheduler.launcher import ExitInfo, signal_name
from app.scheduler.tail import last_line
from contract.advice import oom_advice
from contract.config import ConfigError, JobConfig, stored_config
from contract.protocol import ExitCode
from contract.rundir import RunDir

MAX_DETAIL = 400
_OOM_PATTERN = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_DISK_FULL_PATTERN = re.compile(r"No space left on device|Errno 28|Disk quota exceeded", re.IGNORECASE)


class StopCause(StrEnum):
    """Why the supervisor signalled a process."""

    CANCEL = "cancel"  # the user asked (status cancelling)
    DEADLINE = "deadline"  # resources.max_runtime_minutes passed
    HUNG = "hung"  # no heartbeat for heartbeat_timeout_s while the process lived


@dataclass
class ProcessStop:
    """The supervisor's own stop of a process: why, when SIGTERM went out, whether SIGKILL followed."""

    cause: StopCause
    detail: str  # "its deadline of 30 minutes" / "no heartbeat for 130 s"
    terminated_at: float
    killed: bool = False


@dataclass(frozen=True)
class Verdict:
    """The final status, its reason (None for success) and the exit_code column value."""

    status: JobStatus
    reason: str | None
    exit_code: int | None  # the process's exit code; -N when signal N killed it; None when unknown


def read_outcome(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/outcome.json as a dict, or None when missing or unreadable (a kill can leave it torn)."""
    try:
        data = json.loads(RunDir(run_dir).outcome.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _oom_reason(on_gpu: bool, config: dict[str, Any]) -> str:
    """The same advice the worker gives (contract.advice), from the job's stored config when it reads."""
    try:
        job_config: JobConfig | None = stored_config(config)
    except ConfigError:
        job_config = None
    return oom_advice(job_config, on_gpu=on_gpu)


def _signal_reason(sig: int) -> str:
    reason = f"killed by signal {sig} ({signal_name(sig)})"
    if sig == signal.SIGKILL:
        reason += "; if nobody killed it, the system probably ran out of memory (the kernel's OOM killer)"
    elif sig == signal.SIGSEGV:
        reason += "; a crash in native code (CUDA, bitsandbytes) — the log tail may say more"
    return reason


def _stopped_reason(stop: ProcessStop, code: int | None) -> str:
    if stop.cause == StopCause.DEADLINE:
        reason = f"exceeded {stop.detail} and was stopped"
    else:
        reason = f"{stop.detail}; it was stopped as hung"
    if code == ExitCode.CANCELLED:
        reason += " (a checkpoint was saved: resume continues from it)"
    if stop.killed:
        reason += "; it ignored SIGTERM and was killed"
    return reason


def classify_exit(
    exit_info: ExitInfo,
    *,
    outcome: dict[str, Any] | None,
    stderr_tail: str,
    stop: ProcessStop | None = None,
    cancel_requested: bool = False,
    on_gpu: bool = False,
    config: dict[str, Any] | None = None,
) -> Verdict:
    """Decide succeeded / failed / cancelled for a process that ended, with a plain-words reason."""
    config = config or {}
    outcome = outcome or {}
    code: int | None = exit_info.returncode
    if not exit_info.known and isinstance(outcome.get("exit_code"), int):
        code = outcome["exit_code"]  # a re-attached process: the worker's own record is all we have
    sig = exit_info.signal
    exit_code = code if code is not None else (-sig if sig is not None else None)
    said = _clip(str(outcome.get("reason") or "")) if outcome.get("reason") else ""
    detail = said or _clip(last_line(stderr_tail))
    asked_to_cancel = cancel_requested or (stop is not None and stop.cause == StopCause.CANCEL)

    if code == ExitCode.SUCCEEDED:
        return Verdict(JobStatus.SUCCEEDED, None, exit_code)
    if stop is not None and stop.cause in (StopCause.DEADLINE, StopCause.HUNG):
        return Verdict(JobStatus.FAILED, _stopped_reason(stop, code), exit_code)
    if code == ExitCode.CANCELLED or (asked_to_cancel and sig in (signal.SIGTERM, signal.SIGKILL)):
        if asked_to_cancel:
            reason = "cancelled on request"
            if stop is not None and stop.killed:
                reason += "; it did not stop after SIGTERM within the grace period and was killed"
        else:
            reason = "stopped by a SIGTERM from outside Tuneboard; resume continues from its last checkpoint"
        return Verdict(JobStatus.CANCELLED, reason, exit_code)
    if sig is not None:
        return Verdict(JobStatus.FAILED, _signal_reason(sig), exit_code)
    if code is None:
        if outcome.get("status") == JobStatus.SUCCEEDED.value:
            return Verdict(JobStatus.SUCCEEDED, None, None)
        reason = (
            "worker lost: the process ended after the app restarted and left no outcome.json, "
            "so its exit status is unknown — the log tail may say why; "
            "resume continues from its last checkpoint"
        )
        return Verdict(JobStatus.FAILED, reason, None)
    if code == ExitCode.CONFIG_ERROR:
        return Verdict(
            JobStatus.FAILED, f"the config or dataset cannot be used: {detail or 'see the log'}", code
        )
    if code == ExitCode.DIVERGED:
        return Verdict(
            JobStatus.FAILED, f"diverged: {detail or 'the divergence guard stopped the run'}", code
        )
    if code == ExitCode.OUT_OF_MEMORY or _OOM_PATTERN.search(stderr_tail) is not None:
        # the worker's own account names the config values to change; ours is the generic fallback
        if code == ExitCode.OUT_OF_MEMORY and said.startswith("out of"):
            return Verdict(JobStatus.FAILED, said, code)
        return Verdict(JobStatus.FAILED, _oom_reason(on_gpu, config), code)
    if said.startswith("no space left on device"):
        return Verdict(JobStatus.FAILED, said, code)
    if not said and _DISK_FULL_PATTERN.search(stderr_tail) is not None:
        # the worker could not even write outcome.json: the disk holding RUN_DIR is full
        return Verdict(
            JobStatus.FAILED,
            "no space left on device: the disk holding the run directory is full; free space "
            "or lower training.save_total_limit, then resume (only complete checkpoints are resumed)",
            code,
        )
    if code == ExitCode.QUANTIZATION_INCOMPATIBLE:
        return Verdict(JobStatus.FAILED, f"quantization incompatibility: {detail or 'see the log'}", code)
    reason = f"exited with code {code}"
    if code > 128 and (code - 128) in {s.value for s in signal.Signals}:
        reason += f" (128+{code - 128}: usually killed by {signal_name(code - 128)})"
    if detail:
        reason += f": {detail}"
    return Verdict(JobStatus.FAILED, reason, code)
