"""What the compare views show: run summaries, metric series on a common x axis, and config differences.

Series are read per job with app.metrics.queries (downsampled, spikes kept). The x axis is the step,
or a metric the worker reports alongside it (tokens_seen, epoch): each point's step is mapped to that
metric's value at the step, interpolating between reported steps; a point past the last reported x
value is left out rather than guessed.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.jobs.schemas import job_summary
from app.jobs.status import TERMINAL
from app.metrics.queries import raw_points, series
from app.models import Job, JobEvent, MetricSeries
from contract.config import field_paths
from contract.metrics import X_AXIS_KEYS

MIN_RUNS = 2
MAX_RUNS = 8
# a sweep group page compares all its members; the sweep cap bounds it
MAX_GROUP_RUNS = 32
# the step, or a cumulative count the worker reports next to it (contract/metrics.py marks them)
X_AXES = ("step", *X_AXIS_KEYS)
DEFAULT_METRIC = "loss"
DEFAULT_MAX_POINTS = 1000

_series = MetricSeries.__table__
_event = JobEvent.__table__


class CompareError(ValueError):
    """A compare request that cannot be answered; `status_code` is 400 or 404."""

    def __init__(self, status_code: int, message: str, unknown_ids: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.unknown_ids = list(unknown_ids)


def parse_ids(raw: str | Iterable[str] | None) -> list[int]:
    """Job ids from "1,2,3" (or repeated values), in the order given, deduplicated; 400 if unreadable."""
    texts = [raw] if isinstance(raw, str) else list(raw or [])
    ids: list[int] = []
    seen: set[int] = set()
    for text in texts:
        for part in text.split(","):
            part = part.strip().lstrip("#")
            if not part:
                continue
            if not (part.isascii() and part.isdigit()) or len(part) > 18:
                raise CompareError(400, f"{part[:40]!r} is not a job id; pass ids as numbers: ?ids=1,2,3")
            job_id = int(part)
            if job_id not in seen:
                seen.add(job_id)
                ids.append(job_id)
            if len(ids) > MAX_GROUP_RUNS:
                break  # already too many for any view: check_count says so without reading the rest
    return ids


def check_count(ids: Sequence[int], *, low: int = MIN_RUNS, high: int = MAX_RUNS) -> None:
    """Refuse (400) fewer than `low` or more than `high` runs, saying how many were given."""
    if not low <= len(ids) <= high:
        got = str(len(ids)) if len(ids) <= MAX_GROUP_RUNS else f"more than {MAX_GROUP_RUNS}"
        raise CompareError(400, f"compare takes {low} to {high} runs; got {got}. Pick them with ?ids=1,2,3")


def load_jobs(session: Session, ids: Sequence[int]) -> list[Job]:
    """The jobs in the order of `ids`; a 404 CompareError naming every id that does not exist."""
    found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(list(ids))))}
    unknown = [i for i in ids if i not in found]
    if unknown:
        names = ", ".join(str(i) for i in unknown)
        noun = "job" if len(unknown) == 1 else "jobs"
        verb = "does" if len(unknown) == 1 else "do"
        raise CompareError(404, f"{noun} {names} {verb} not exist; list jobs with GET /api/jobs", unknown)
    return [found[i] for i in ids]


def group_jobs(session: Session, group_id: str) -> list[Job]:
    """The members of a sweep group, oldest first; a 404 CompareError when the group has none."""
    jobs = list(session.scalars(select(Job).where(Job.group_id == group_id).order_by(Job.id)))
    if not jobs:
        raise CompareError(404, f"sweep group {group_id!r} does not exist; start one from a job's Sweep form")
    return jobs[:MAX_GROUP_RUNS]


# ---------------------------------------------------------------------------------------------- configs


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"learning_rate": 1e-4}} → {"training.learning_rate": 1e-4}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _schema_order(keys: Iterable[str]) -> list[str]:
    order = {path: i for i, path in enumerate(field_paths())}
    # keys from an older schema (not in field_paths) go last, alphabetically
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def config_table(jobs: Sequence[Job]) -> dict[str, dict[int, Any]]:
    """Every dotted config key of these jobs, in schema order: {key: {job_id: value}} (None when absent)."""
    flat = {job.id: flatten_config(job.config or {}) for job in jobs}
    keys = _schema_order({k for values in flat.values() for k in values})
    return {key: {job.id: flat[job.id].get(key) for job in jobs} for key in keys}


def _canonical(value: Any) -> str:
    # 16 and 16.0 are the same setting; JSON with sorted keys compares lists and dicts by content
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def differing_keys(table: dict[str, dict[int, Any]]) -> list[str]:
    """The keys whose values are not all the same."""
    return [key for key, values in table.items() if len({_canonical(v) for v in values.values()}) > 1]


def config_diff(jobs: Sequence[Job]) -> dict[str, dict[int, Any]]:
    """Only the config keys that differ between the jobs: {dotted_key: {job_id: value}}."""
    table = config_table(jobs)
    return {key: table[key] for key in differing_keys(table)}


# ---------------------------------------------------------------------------------------------- summaries


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def duration_seconds(summary: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start to finish (or to now while the run is on); None if it never started."""
    start = _parse_iso(summary.get("running_at")) or _parse_iso(summary.get("starting_at"))
    if start is None:
        return None
    end = _parse_iso(summary.get("finished_at"))
    if end is None:
        if summary.get("status") in TERMINAL:
            return None
        end = now or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def run_stats(session: Session, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per job: best (lowest finite) training loss and the number of divergence-guard events."""
    stats: dict[int, dict[str, Any]] = {i: {"best_loss": None, "guard_events": 0} for i in job_ids}
    if not job_ids:
        return stats
    # the per-series summary ingest keeps (its lowest finite value), not a scan of every loss point
    best = select(_series.c.job_id, _series.c.min_value).where(
        _series.c.job_id.in_(list(job_ids)), _series.c.key == "loss", _series.c.min_value.is_not(None)
    )
    for job_id, value in session.execute(best):
        stats[job_id]["best_loss"] = value
    guards = (
        select(_event.c.job_id, func.count())
        .where(_event.c.job_id.in_(list(job_ids)), _event.c.kind == "guard")
        .group_by(_event.c.job_id)
    )
    for job_id, count in session.execute(guards):
        stats[job_id]["guard_events"] = int(count)
    return stats


def compare_row(
    summary: dict[str, Any], stats: dict[str, Any], now: datetime | None = None
) -> dict[str, Any]:
    """A job summary plus what the compare table adds: final/best loss, guard events, duration."""
    return {
        **summary,
        "final_loss": summary.get("last_loss"),
        "best_loss": stats.get("best_loss"),
        "guard_events": stats.get("guard_events", 0),
        "duration_seconds": duration_seconds(summary, now),
    }


def compare_rows(session: Session, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """The summary-table rows of these jobs, in the same order."""
    stats = run_stats(session, [j.id for j in jobs])
    now = datetime.now(UTC)
    return [compare_row(job_summary(job), stats[job.id], now) for job in jobs]


def metric_keys(session: Session, job_ids: Sequence[int]) -> dict[int, list[str]]:
    """The metric keys each job has points for, alphabetically."""
    keys: dict[int, list[str]] = {i: [] for i in job_ids}
    if not job_ids:
        return keys
    stmt = (
        select(_series.c.job_id, _series.c.key)
        .where(_series.c.job_id.in_(list(job_ids)))
        .order_by(_series.c.job_id, _series.c.key)
    )
    for job_id, key in session.execute(stmt):
        keys[job_id].append(key)
    return keys


# ---------------------------------------------------------------------------------------------- series


def map_to_x(
    points: Sequence[Sequence[Any]], x_points: Sequence[tuple[int, float | None]]
) -> list[list[Any]]:
    """[[step, y], ...] → [[x, y], ...] where x is the x metric's value at that step.

    Steps between two reported x values are interpolated linearly; before the first one the run is
    taken to start from x = 0 at step 0 (no tokens seen, epoch 0); after the last one the point is
    dropped, because extrapolating would draw a value the run never reported.
    """
    known = [(int(s), float(v)) for s, v in x_points if v is not None]
    if not known:
        return []
    if known[0][0] > 0:
        known.insert(0, (0, 0.0))
    steps = [s for s, _ in known]
    mapped: list[list[Any]] = []
    for step, value in points:
        i = bisect.bisect_left(steps, step)
        if i < len(steps) and steps[i] == step:
            x = known[i][1]
        elif 0 < i < len(steps):
            (s0, x0), (s1, x1) = known[i - 1], known[i]
            x = x0 + (x1 - x0) * (step - s0) / (s1 - s0)
        else:
            continue
        mapped.append([x, value])
    return mapped


def compare_series(
    session: Session,
    *,
    job_ids: Sequence[int],
    metrics: Sequence[str] | None,
    x: str = "step",
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict[str, dict[int, list[list[Any]]]]:
    """{metric: {job_id: [[x, y], ...]}} per job with points (every metric when `metrics` is None)."""
    if x not in X_AXES:
        raise CompareError(400, f"unknown x axis {x!r}; use one of {', '.join(X_AXES)}")
    keys = list(metrics) if metrics else None
    result: dict[str, dict[int, list[list[Any]]]] = {k: {} for k in keys or []}
    for job_id in job_ids:
        by_key = series(session, job_id=job_id, keys=keys, max_points=max_points)
        x_points: list[tuple[int, float | None]] = []
        if x != "step":
            x_points = raw_points(session, job_id=job_id, keys=[x]).get(x, [])
        for key, points in by_key.items():
            if not points:
                continue
            mapped = [list(p) for p in points] if x == "step" else map_to_x(points, x_points)
            if mapped:
                result.setdefault(key, {})[job_id] = mapped
    return result


def compare(
    session: Session,
    *,
    jobs: Sequence[Job],
    metrics: Sequence[str] | None = None,
    x: str = "step",
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict[str, Any]:
    """The whole compare answer: runs (summary rows), series per metric and job, and the config diff."""
    ids = [j.id for j in jobs]
    return {
        "x": x,
        "runs": compare_rows(session, jobs),
        "series": compare_series(session, job_ids=ids, metrics=metrics, x=x, max_points=max_points),
        "config_diff": config_diff(jobs),
    }
