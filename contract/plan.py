"""The run plan: how a job ran — every speed lever's state and why, the micro-batch split, the optimizer.

The worker resolves the plan once before training from the JobConfig, the device, the world size and what
its probes measured; writes it to RUN_DIR/plan.json and the adapter folder; reports it once as a `plan`
event; and a resumed attempt reads it back to keep the first attempt's choices (its checkpoint holds that
optimizer's state and counts batches with that split). The app shows it on the job page.

Torch-free: both sides import it. The file is plain JSON, so the app reads it without the worker's code:

    {"version": 1, "device": "cuda", "world_size": 1,
     "levers": [{"name": "compile", "value": true, "source": "default", "reason": "..."}, ...],
     "micro_batch": {"micro_batch": 16, "grad_accum": 1, ...} | null,
     "preflight": {"ok": true, "summary": ..., ...} | null,
     "overrides": {"altup_sum": "off"}}   (benchmarks only: levers forced outside the config)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

PLAN_VERSION = 1
PLAN_FILE = "plan.json"

# Where a lever's state came from; the page groups and colours by it.
Source = Literal["default", "config", "probe", "resumed", "fallback", "override"]
SOURCES: tuple[str, ...] = ("default", "config", "probe", "resumed", "fallback", "override")


@dataclass(frozen=True)
class LeverChoice:
    """One lever's state in a run and the plain-words reason for it."""

    name: str
    value: Any  # bool for on/off levers; a number, a name or a JSON-able object for the others
    source: Source
    reason: str

    @property
    def shown(self) -> str:
        """The value as the job page prints it."""
        if self.value is True:
            return "on"
        if self.value is False:
            return "off"
        if self.value is None:
            return "—"
        if isinstance(self.value, dict):
            return json.dumps(self.value, sort_keys=True)
        return str(self.value)


@dataclass
class RunPlan:
    """How one run computes. Built up while the worker sets the run up, then written once before training."""

    device: str
    world_size: int = 1
    levers: dict[str, LeverChoice] = field(default_factory=dict)
    micro_batch: dict[str, Any] | None = None  # worker.train.speed.microbatch.Split as a dict
    preflight: dict[str, Any] | None = None  # the preflight result a resumed attempt reuses
    # lever name → value a benchmark forced (never set for jobs); kept so the plan shows it
    overrides: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, source: Source, reason: str) -> LeverChoice:
        """Record (or replace) the state of lever `name`; returns the choice."""
        choice = LeverChoice(name, value, source, reason)
        self.levers[name] = choice
        return choice

    def value(self, name: str, default: Any = None) -> Any:
        """The state of lever `name`, `default` when the plan does not hold it."""
        choice = self.levers.get(name)
        return default if choice is None else choice.value

    def is_on(self, name: str) -> bool:
        """Whether the on/off lever `name` is on (absent: off)."""
        return self.value(name) is True

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plan.json, the `plan` event's payload)."""
        return {
            "version": PLAN_VERSION,
            "device": self.device,
            "world_size": self.world_size,
            "levers": [asdict(choice) for choice in self.levers.values()],
            "micro_batch": self.micro_batch,
            "preflight": self.preflight,
            "overrides": dict(self.overrides),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        """Inverse of `to_dict`; raises ValueError on a shape it does not know."""
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise ValueError(f"not a version {PLAN_VERSION} run plan")
        plan = cls(device=str(data.get("device", "")), world_size=int(data.get("world_size", 1)))
        for item in data.get("levers") or []:
            source = str(item.get("source", "default"))
            if source not in SOURCES:
                raise ValueError(f"lever {item.get('name')!r} has an unknown source {source!r}")
            plan.set(str(item["name"]), item.get("value"), source, str(item.get("reason", "")))  # type: ignore[arg-type]
        micro = data.get("micro_batch")
        pre = data.get("preflight")
        plan.micro_batch = dict(micro) if isinstance(micro, dict) else None
        plan.preflight = dict(pre) if isinstance(pre, dict) else None
        plan.overrides = {str(k): str(v) for k, v in (data.get("overrides") or {}).items()}
        return plan


def write_plan(path: Path, plan: RunPlan) -> None:
    """Write `plan` to `path` atomically (a resumed attempt must never read half a plan)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def read_plan(path: Path) -> RunPlan | None:
    """The plan at `path`; None when there is none or it cannot be read (then the worker resolves anew)."""
    try:
        return RunPlan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
