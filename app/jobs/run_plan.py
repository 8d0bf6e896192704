"""The job page's "how this run ran" panel: the run plan the worker reported (contract/plan.py).

Read from the newest `plan` event rather than RUN_DIR/plan.json, so a remote worker's plan shows as soon as
its events arrive. A plan the app cannot read is shown as absent, never as an error page.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.metrics import queries
from contract.plan import LeverChoice, RunPlan

# Plain words for where a lever's state came from (the panel's "why" column starts with these).
SOURCE_LABELS = {
    "default": "default",
    "config": "config",
    "probe": "measured",
    "resumed": "first attempt",
    "fallback": "fell back",
    "override": "benchmark override",
}


@dataclass(frozen=True)
class PlanRow:
    """One line of the panel."""

    name: str
    value: str
    source: str  # the raw source, for a CSS class
    source_label: str
    reason: str


@dataclass(frozen=True)
class PlanView:
    """What the panel shows: where the run computed and each lever's row."""

    device: str
    world_size: int
    rows: list[PlanRow]
    overrides: dict[str, str]


def _row(choice: LeverChoice) -> PlanRow:
    return PlanRow(
        name=choice.name.replace("_", " "),
        value=choice.shown,
        source=choice.source,
        source_label=SOURCE_LABELS.get(choice.source, choice.source),
        reason=choice.reason,
    )


def plan_view(plan: RunPlan) -> PlanView:
    """The panel's rows for `plan`, in the plan's own order."""
    rows = [_row(choice) for choice in plan.levers.values()]
    return PlanView(plan.device, plan.world_size, rows, dict(plan.overrides))


def latest_plan_view(session: Session, *, job_id: int) -> PlanView | None:
    """The newest plan job `job_id` reported, ready to show; None before the worker has reported one."""
    events = queries.newest_events(session, job_id=job_id, kinds=("plan",), limit=1)
    if not events:
        return None
    try:
        return plan_view(RunPlan.from_dict(events[-1]["payload"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
