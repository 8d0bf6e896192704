"""Plan and queue a sweep: the cartesian product of one or two config fields' values, as one job group.

Every combination is validated with contract.config before anything is created: one bad value and the
whole sweep is refused, naming the field and the value, with no job left behind.
"""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass
from typing import Any

import yaml
from sqlalchemy.orm import Session

from app.jobs.service import apply_overrides, create_job
from app.models import Job
from contract.config import ConfigError, JobConfig, config_to_dict, parse_config

MAX_SWEEP_JOBS = 32
MAX_SWEEP_FIELDS = 2
MAX_NAME = 200  # JobConfig.name's limit


class SweepError(ValueError):
    """A sweep that cannot be queued. `problems` maps a dotted field (or "") to what is wrong."""

    def __init__(self, message: str, problems: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems


@dataclass(frozen=True)
class SweepMember:
    """One planned job of a sweep: the values it sets and its validated config."""

    overrides: dict[str, Any]
    config: JobConfig


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _check_shape(axes: Any) -> dict[str, list[Any]]:
    if not isinstance(axes, dict) or not axes:
        raise SweepError(
            "a sweep needs one or two fields, each with a list of values",
            {"": 'send {"training.learning_rate": [0.0001, 0.0002]} (at most two fields)'},
        )
    if len(axes) > MAX_SWEEP_FIELDS:
        raise SweepError(
            f"a sweep varies at most {MAX_SWEEP_FIELDS} fields; got {len(axes)}",
            {"": f"sweep over one or two of: {', '.join(map(str, axes))}"},
        )
    problems: dict[str, str] = {}
    for field, values in axes.items():
        if not isinstance(values, list) or not values:
            problems[str(field)] = "give a non-empty list of values, e.g. [0.0001, 0.0002]"
    if problems:
        raise SweepError("every sweep field needs a non-empty list of values", problems)
    total = 1
    for values in axes.values():
        total *= len(values)
    if total > MAX_SWEEP_JOBS:
        sizes = " × ".join(str(len(v)) for v in axes.values())
        raise SweepError(
            f"this sweep would queue {total} jobs ({sizes}); the limit is {MAX_SWEEP_JOBS}",
            {"": f"use fewer values: at most {MAX_SWEEP_JOBS} jobs per sweep"},
        )
    return {str(k): list(v) for k, v in axes.items()}


def plan_sweep(job: Job, axes: Any) -> list[SweepMember]:
    """Validate every combination of `axes` ({dotted_field: [values]}) applied to `job`'s config.

    Raises SweepError naming each bad field and value (and the duplicates); creates nothing.
    """
    grid = _check_shape(axes)
    fields = list(grid)
    try:
        apply_overrides(job.config, {f: grid[f][0] for f in fields})
    except ConfigError as exc:
        raise SweepError("invalid sweep: unknown field", exc.problems) from None
    problems: dict[str, str] = {}
    members: list[SweepMember] = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(grid[f] for f in fields)):
        overrides = dict(zip(fields, combo, strict=True))
        try:
            config = parse_config(apply_overrides(job.config, overrides))
        except ConfigError as exc:
            for path, message in exc.problems.items():
                if path in overrides:
                    problems.setdefault(path, f"value {_shown(overrides[path])}: {message}")
                else:
                    # a cross-field check tripped by this combination (e.g. max_seq_len beyond the model)
                    where = ", ".join(f"{f}={_shown(v)}" for f, v in overrides.items())
                    problems.setdefault(path or fields[0], f"with {where}: {message}")
            continue
        canonical = json.dumps(config_to_dict(config), sort_keys=True)
        if canonical in seen:
            first = ", ".join(f"{f}={_shown(v)}" for f, v in seen[canonical].items())
            again = ", ".join(f"{f}={_shown(v)}" for f, v in overrides.items())
            problems.setdefault(
                fields[0], f"{again} gives the same config as {first}; drop the duplicate value"
            )
            continue
        seen[canonical] = overrides
        members.append(SweepMember(overrides, config))
    if problems:
        raise SweepError("invalid sweep: " + "; ".join(f"{k}: {v}" for k, v in problems.items()), problems)
    return members


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def member_name(base: str, member: SweepMember) -> str:
    """A list-friendly name: "<base> · learning_rate=0.0001, r=8" (from the validated values)."""
    flat = config_to_dict(member.config)
    parts = []
    for path in member.overrides:
        node: Any = flat
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        parts.append(f"{_leaf(path)}={node:g}" if isinstance(node, float) else f"{_leaf(path)}={node}")
    suffix = ", ".join(parts)
    name = f"{base} · {suffix}" if base else suffix
    return name[:MAX_NAME]


def new_group_id(job: Job) -> str:
    """A short, unguessable-enough, readable group id: sweep-<job id>-<6 hex>."""
    return f"sweep-{job.id}-{secrets.token_hex(3)}"


def create_sweep(session: Session, *, job: Job, axes: Any) -> tuple[str, list[Job]]:
    """Queue one job per combination of `axes` on `job`'s config, all in a new group; (group_id, jobs)."""
    members = plan_sweep(job, axes)
    group_id = new_group_id(job)
    base = (job.config or {}).get("name") or job.name or f"job {job.id}"
    created: list[Job] = []
    for member in members:
        config = member.config
        if "name" not in member.overrides:
            config = config.model_copy(update={"name": member_name(str(base), member)})
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        created.append(
            create_job(session, config=config, config_text=text, parent_job_id=job.id, group_id=group_id)
        )
    return group_id, created
