"""The contract between the app and a training process: run-directory layout, event format, exit codes.

Torch-free: both sides import it. The training child never touches the database; everything it has to
say travels as events (spooled to RUN_DIR/events.jsonl, then POSTed to the app) and as files in RUN_DIR.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any


class EventKind(StrEnum):
    """What an event carries. Payload shapes are documented per kind."""

    METRIC = "metric"  # {"loss": 1.2, "grad_norm": ..., ...}: one or more metric keys at `step`
    STATUS = "status"  # {"status": "running" | ..., "message": str, "total_steps": int?}
    PROGRESS = "progress"  # {"step": int, "total_steps": int, "eta_seconds": float?}
    LOG = "log"  # {"level": "info" | "warning" | "error", "message": str}
    PREFLIGHT = "preflight"  # {"ok": bool, "summary": str, "kept_in_full_precision": [...], "notes": [...]}
    CHECKPOINT = "checkpoint"  # {"path": str (relative to RUN_DIR), "step": int}
    GUARD = "guard"  # {"reason": str, "action": "stop" | "rollback" | "warn", "detail": {...}}
    SAMPLE = "sample"  # {"prompt": str, "completion": str}
    ARTIFACT = "artifact"  # {"name": "adapter", "path": str (relative to RUN_DIR)}
    HEARTBEAT = "heartbeat"  # {}: sent when nothing else happened for a while


# Metric keys the dashboard charts (others are stored and listed too).
METRIC_KEYS = (
    "loss",
    "eval_loss",
    "grad_norm",
    "learning_rate",
    "epoch",
    "tokens_per_second",
    "tokens_seen",
    "vram_allocated_gb",
    "vram_reserved_gb",
    "vram_peak_gb",
    "gpu_util",
    "gpu_power_w",
    "rss_gb",
)


class ExitCode(IntEnum):
    """Exit codes of `python -m worker.train`; the supervisor classifies on these plus outcome.json."""

    SUCCEEDED = 0
    FAILED = 1  # anything unexpected: see outcome.json / the stderr tail
    CONFIG_ERROR = 2  # the config or the dataset cannot be used
    CANCELLED = 3  # SIGTERM / cancel control: a checkpoint was saved, then a clean exit
    DIVERGED = 4  # the divergence guard stopped the run
    OUT_OF_MEMORY = 5  # CUDA (or host) out of memory
    QUANTIZATION_INCOMPATIBLE = 6  # preflight found a module that cannot train quantized and could not fix it


@dataclass(frozen=True)
class RunDir:
    """Paths inside one job's run directory. Same layout for local and remote workers."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"  # the validated JobConfig (canonical JSON)

    @property
    def job(self) -> Path:
        return self.root / "job.json"  # {"job_id", "app_url", "token"} — absent for standalone runs

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"  # the spool: one JSON event per line, seq increasing

    @property
    def outcome(self) -> Path:
        return self.root / "outcome.json"  # written last by the worker: {"status", "reason", "exit_code"}

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"  # bounded tail of the child's stderr (written by the launcher)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"  # checkpoint-<step>/ each, COMPLETE marker written last

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"  # final PEFT adapter + tokenizer + README.md model card

    @property
    def control(self) -> Path:
        return self.root / "control.json"  # {"cancel": true} written by a launcher that cannot signal

    @property
    def app_url(self) -> Path:
        # the address of the app that supervises the run now, one line, written by the app at launch and
        # when a standby takes over; the worker only reads it (and follows it when its posts fail)
        return self.root / "app_url"

    @property
    def owner(self) -> Path:
        return self.root / "owner.json"  # {"job_id", "run"}: written by the app when it makes the directory


CHECKPOINT_COMPLETE_MARKER = "COMPLETE"


def complete_checkpoints(run_dir: RunDir) -> list[Path]:
    """Checkpoint directories whose completeness marker exists, oldest first."""
    if not run_dir.checkpoints.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for child in run_dir.checkpoints.iterdir():
        if not child.name.startswith("checkpoint-") or not (child / CHECKPOINT_COMPLETE_MARKER).is_file():
            continue
        try:
            found.append((int(child.name.split("-", 1)[1]), child))
        except ValueError:
            continue
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(run_dir: RunDir) -> Path | None:
    """The newest resumable checkpoint, or None."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def encode_number(value: float) -> float | str:
    """JSON has no NaN/Infinity: non-finite floats travel as the strings 'nan', 'inf', '-inf'."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def decode_number(value: Any) -> float | None:
    """Inverse of encode_number; None for anything that is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def make_event(seq: int, kind: EventKind, step: int, payload: dict[str, Any], ts: float) -> dict[str, Any]:
    """One event as it is spooled and sent."""
    return {"seq": seq, "kind": str(kind), "step": step, "ts": ts, "payload": payload}


def read_spool(path: Path) -> list[dict[str, Any]]:
    """All complete events in a spool file (a torn last line from a kill is ignored)."""
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return events
