"""The contract between the app and a training process: event format, metric keys, exit codes.

Torch-free: both sides import it. The training child never touches the database; everything it has to
say travels as events (spooled to RUN_DIR/events.jsonl, then POSTed to the app) and as files in RUN_DIR
(their names: contract/rundir.py).
"""

from __future__ import annotations

import json
import math
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

# the keys a worker reports; their chart panels, labels and units: the table in contract/metrics.py
from contract.metrics import METRIC_KEYS as METRIC_KEYS


class EventKind(StrEnum):
    """What an event carries. Payload shapes are documented per kind."""

    METRIC = "metric"  # {"loss": 1.2, "grad_norm": ..., ...}: one or more metric keys at `step`
    STATUS = "status"  # {"status": "running" | ..., "message": str, "total_steps": int?}
    PROGRESS = "progress"  # {"step": int, "total_steps": int, "eta_seconds": float?}
    LOG = "log"  # {"level": "info" | "warning" | "error", "message": str}
    PREFLIGHT = "preflight"  # {"ok": bool, "summary": str, "kept_in_full_precision": [...], "notes": [...]}
    PLAN = "plan"  # contract.plan.RunPlan.to_dict(): every speed lever's state and why, once before training
    CHECKPOINT = "checkpoint"  # {"path": str (relative to RUN_DIR), "step": int}
    GUARD = "guard"  # {"reason": str, "action": "stop" | "rollback" | "warn", "detail": {...}}
    SAMPLE = "sample"  # {"prompt": str, "completion": str}
    ARTIFACT = "artifact"  # {"name": "adapter", "path": str (relative to RUN_DIR)}
    HEARTBEAT = "heartbeat"  # {}: sent when nothing else happened for a while


class ExitCode(IntEnum):
    """Exit codes of `python -m worker.train`; the supervisor classifies on these plus outcome.json."""

    SUCCEEDED = 0
    FAILED = 1  # anything unexpected: see outcome.json / the stderr tail
    CONFIG_ERROR = 2  # the config or the dataset cannot be used
    CANCELLED = 3  # SIGTERM / cancel control: a checkpoint was saved, then a clean exit
    DIVERGED = 4  # the divergence guard stopped the run
    OUT_OF_MEMORY = 5  # CUDA (or host) out of memory
    QUANTIZATION_INCOMPATIBLE = 6  # preflight found a module that cannot train quantized and could not fix it


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
