"""Reading metrics and events for charts, tables and the SSE stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.metrics.downsample import Point, downsample
from app.models import JobEvent, MetricPoint

_metric = MetricPoint.__table__
_event = JobEvent.__table__


def metric_keys(session: Session, *, job_id: int) -> list[str]:
    """The metric keys a job has points for, alphabetically."""
    stmt = select(_metric.c.key).where(_metric.c.job_id == job_id).distinct().order_by(_metric.c.key)
    return [row[0] for row in session.execute(stmt)]


def raw_points(
    session: Session,
    *,
    job_id: int,
    keys: list[str] | None = None,
    after_step: int | None = None,
    from_step: int | None = None,
) -> dict[str, list[Point]]:
    """Points per key in step order: step > after_step and/or step >= from_step (no downsampling)."""
    # Core rows, not ORM objects: ~8x faster for long series
    stmt = select(_metric.c.key, _metric.c.step, _metric.c.value).where(_metric.c.job_id == job_id)
    if keys:
        stmt = stmt.where(_metric.c.key.in_(keys))
    if after_step is not None:
        stmt = stmt.where(_metric.c.step > after_step)
    if from_step is not None:
        stmt = stmt.where(_metric.c.step >= from_step)
    stmt = stmt.order_by(_metric.c.key, _metric.c.step)
    result: dict[str, list[Point]] = {}
    for key, step, value in session.execute(stmt):
        result.setdefault(key, []).append((step, value))
    return result


def series(
    session: Session,
    *,
    job_id: int,
    keys: list[str] | None,
    max_points: int = 2000,
    after_step: int | None = None,
    method: str = "minmax",
) -> dict[str, list[list[float | int | None]]]:
    """{key: [[step, value_or_null], ...]} downsampled to at most max_points per key, keeping spikes."""
    points = raw_points(session, job_id=job_id, keys=keys, after_step=after_step)
    return {
        key: [[step, value] for step, value in downsample(pts, max_points, method)]
        for key, pts in points.items()
    }


def event_dict(row: Any) -> dict[str, Any]:
    """One stored event as the API shows it."""
    return {"seq": row.seq, "step": row.step, "kind": row.kind, "payload": row.payload, "ts": row.ts}


def events(
    session: Session,
    *,
    job_id: int,
    kinds: list[str] | None = None,
    after_seq: int = 0,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Non-metric events after `after_seq`, oldest first, at most `limit`."""
    stmt = select(_event).where(_event.c.job_id == job_id, _event.c.seq > after_seq)
    if kinds:
        stmt = stmt.where(_event.c.kind.in_(kinds))
    stmt = stmt.order_by(_event.c.seq).limit(limit)
    return [event_dict(row) for row in session.execute(stmt)]


def stream_cursor(session: Session, *, job_id: int) -> str:
    """'<last event seq>.<last metric step>' as stored now: the SSE position right after this history."""
    seq = session.scalar(select(func.max(_event.c.seq)).where(_event.c.job_id == job_id))
    step = session.scalar(select(func.max(_metric.c.step)).where(_metric.c.job_id == job_id))
    return f"{seq or 0}.{'' if step is None else step}"


def latest_values(session: Session, *, job_id: int) -> dict[str, float | None]:
    """The newest value of every metric key (for the no-JavaScript table and the header)."""
    newest = (
        select(_metric.c.key, func.max(_metric.c.step).label("step"))
        .where(_metric.c.job_id == job_id)
        .group_by(_metric.c.key)
    ).subquery()
    stmt = (
        select(_metric.c.key, _metric.c.value, _metric.c.nonfinite)
        .join(newest, (_metric.c.key == newest.c.key) & (_metric.c.step == newest.c.step))
        .where(_metric.c.job_id == job_id)
        .order_by(_metric.c.key)
    )
    result: dict[str, float | None] = {}
    for key, value, nonfinite in session.execute(stmt):
        result[key] = float(nonfinite) if value is None and nonfinite else value
    return result


def newest_events(
    session: Session, *, job_id: int, kinds: Sequence[str], after_seq: int = 0, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` events of these kinds after `after_seq`, oldest first (the job page's lists)."""
    stmt = (
        select(_event)
        .where(_event.c.job_id == job_id, _event.c.seq > after_seq, _event.c.kind.in_(list(kinds)))
        .order_by(_event.c.seq.desc())
        .limit(limit)
    )
    rows = list(session.execute(stmt))
    rows.reverse()
    return [event_dict(row) for row in rows]
