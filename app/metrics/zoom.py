"""A chart's points for a step range, read from the tiers: the cost follows the buckets drawn, not the run.

The finest tier with at most about max_points / 2 buckets over the range is read; a bucket contributes its
min and max points and the first non-finite point (drawn as a gap), so spikes, NaN and inf show at every
zoom. Where the range cuts a bucket in two, that edge is covered by finer tiers down to the raw points,
so nothing outside the range leaks in and nothing inside is lost. A range of at most max_points steps, or a
series of at most max_points points, is read raw.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.metrics.downsample import Point, downsample_minmax
from app.metrics.tiers import BUCKET_FIELDS, TIER_WIDTHS
from app.models import MetricBucket, MetricPoint

_metric = MetricPoint.__table__
_bucket = MetricBucket.__table__
_BUCKET_COLUMNS = [getattr(_bucket.c, name) for name in BUCKET_FIELDS]


def choose_tier(span: int, max_points: int) -> int:
    """The finest tier (1-based) with at most max_points // 2 buckets over `span` steps; 0 means raw."""
    if span <= max_points:
        return 0
    budget = max(1, max_points // 2)
    for tier, width in enumerate(TIER_WIDTHS, start=1):
        if span // width + 2 <= budget:
            return tier
    return len(TIER_WIDTHS)


def _raw(session: Session, job_id: int, key: str, lo: int, hi: int) -> list[Point]:
    stmt = (
        select(_metric.c.step, _metric.c.value)
        .where(_metric.c.job_id == job_id, _metric.c.key == key, _metric.c.step >= lo, _metric.c.step <= hi)
        .order_by(_metric.c.step)
    )
    return [(step, value) for step, value in session.execute(stmt)]


def _bucket_points(row: Any, out: list[Point]) -> None:
    """A bucket's min, max and first non-finite point."""
    _points, nonfinite_points, nonfinite_step, min_step, min_value, max_step, max_value = row[:7]
    if min_step is not None:
        out.append((min_step, min_value))
    if max_step is not None and max_step != min_step:
        out.append((max_step, max_value))
    if nonfinite_points and nonfinite_step is not None:
        out.append((nonfinite_step, None))


def _cover(
    session: Session,
    job_id: int,
    key: str,
    lo: int,
    hi: int,
    tier: int,
    open_left: bool,
    open_right: bool,
    out: list[Point],
) -> tuple[int, float | None] | None:
    """Append points covering steps lo..hi from `tier` (edges from finer tiers); return the last point.

    open_left/open_right: no point of the series lies before lo / after hi, so an edge bucket may be
    read whole instead of splitting it into finer tiers.
    """
    if lo > hi:
        return None
    if tier == 0:
        raw = _raw(session, job_id, key, lo, hi)
        out.extend(raw)
        return raw[-1] if raw else None
    width = TIER_WIDTHS[tier - 1]
    first = lo // width if open_left else -(-lo // width)
    last = hi // width if open_right else (hi + 1) // width - 1
    if first > last:
        return _cover(session, job_id, key, lo, hi, tier - 1, open_left, open_right, out)
    last_point = _cover(session, job_id, key, lo, first * width - 1, tier - 1, open_left, False, out)
    stmt = (
        select(*_BUCKET_COLUMNS)
        .where(
            _bucket.c.job_id == job_id,
            _bucket.c.key == key,
            _bucket.c.tier == tier,
            _bucket.c.bucket >= first,
            _bucket.c.bucket <= last,
        )
        .order_by(_bucket.c.bucket)
    )
    for row in session.execute(stmt):
        _bucket_points(row, out)
        last_point = (row[7], row[8])
    right = _cover(session, job_id, key, (last + 1) * width, hi, tier - 1, False, open_right, out)
    return right or last_point


def tiered_points(
    session: Session, *, job_id: int, summary: Any, lo: int | None, hi: int | None, max_points: int
) -> list[Point]:
    """At most max_points points of one series (a metric_series row) over steps lo..hi, spikes kept."""
    first_step, last_step = summary.first_step, summary.last_step
    lo_eff = first_step if lo is None else max(lo, first_step)
    hi_eff = last_step if hi is None else min(hi, last_step)
    if lo_eff > hi_eff:
        return []
    span = hi_eff - lo_eff + 1
    if summary.points <= max_points or span <= max_points:
        return downsample_minmax(_raw(session, job_id, summary.key, lo_eff, hi_eff), max_points)
    out: list[Point] = []
    last_point = _cover(
        session,
        job_id,
        summary.key,
        lo_eff,
        hi_eff,
        choose_tier(span, max_points),
        lo_eff <= first_step,
        hi_eff >= last_step,
        out,
    )
    if last_point is not None:
        out.append(last_point)  # the chart ends at the latest value; the live stream appends after it
    points = sorted(dict(out).items())  # one point per step, in step order
    if len(points) > max_points:
        points = downsample_minmax(points, max_points)
    return points
