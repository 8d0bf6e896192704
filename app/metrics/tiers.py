"""Multi-resolution history: min/max/last/count of every series in tiers of 8, 64, ... 262144 steps a bucket.

Ingest keeps the tiers in the same transaction as the raw points (`update_series`), so a chart of a run
with ten million points reads a few hundred bucket rows instead of every point (`app.metrics.queries`).
A bucket is always recomputed from its children: tier 1 from the raw points, tier t from the eight tier
t-1 buckets under it. That makes appends and replaced steps (a resume or a guard rollback re-sends steps
while the job runs) the same code path, and each bucket costs at most eight child rows to rebuild.

Min and max are over finite values only; non-finite points are counted and the first one's step is kept,
so a NaN or an inf is drawn (as a gap) at every zoom. `metric_series` holds one summary row per series
(count, last value, finite min/max): the job page's latest values and the compare page's best loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from app.models import MetricBucket, MetricPoint, MetricSeries

FANOUT = 8
TIER_WIDTHS: tuple[int, ...] = tuple(FANOUT**t for t in range(1, 7))  # 8 … 262144 steps per bucket
BACKFILL_CHUNK = 50_000  # raw points per step of rebuild_job
# child ranges closer than this many buckets are read with one query (re-aggregating the gap is harmless)
_MERGE_GAP = 4

_metric = MetricPoint.__table__
_bucket = MetricBucket.__table__
_series = MetricSeries.__table__

Point3 = tuple[int, float | None, str | None]  # (step, value, nonfinite) as stored
# an aggregate: [points, nonfinite_points, nonfinite_step, min_step, min_value, max_step, max_value,
#                last_step, last_value, last_nonfinite]
Agg = list[Any]
BUCKET_FIELDS = (
    "points",
    "nonfinite_points",
    "nonfinite_step",
    "min_step",
    "min_value",
    "max_step",
    "max_value",
    "last_step",
    "last_value",
    "last_nonfinite",
)
_BUCKET_COLUMNS = [getattr(_bucket.c, name) for name in BUCKET_FIELDS]


def merge_into(acc: Agg, child: Sequence[Any]) -> None:
    """Fold `child` (a later run of steps than everything in `acc`) into `acc`."""
    acc[0] += child[0]
    acc[1] += child[1]
    if acc[2] is None and child[2] is not None:
        acc[2] = child[2]
    if child[4] is not None and (acc[4] is None or child[4] < acc[4]):
        acc[3], acc[4] = child[3], child[4]
    if child[6] is not None and (acc[6] is None or child[6] > acc[6]):
        acc[5], acc[6] = child[5], child[6]
    if child[7] >= acc[7]:
        acc[7], acc[8], acc[9] = child[7], child[8], child[9]


def aggregate(children: Iterable[tuple[int, Sequence[Any]]]) -> dict[int, Agg]:
    """{parent bucket: aggregate} from (parent bucket, child aggregate) pairs given in step order."""
    out: dict[int, Agg] = {}
    for parent, child in children:
        acc = out.get(parent)
        if acc is None:
            out[parent] = list(child)
        else:
            merge_into(acc, child)
    return out


def _raw_buckets(rows: Iterable[Any], width: int) -> dict[int, Agg]:
    """{bucket: aggregate} of raw (step, value, nonfinite) rows in step order (the hot loop of ingest)."""
    out: dict[int, Agg] = {}
    for step, value, nonfinite in rows:
        b = step // width
        acc = out.get(b)
        if acc is None:
            acc = out[b] = [0, 0, None, None, None, None, None, step, None, None]
        acc[0] += 1
        if value is None:
            acc[1] += 1
            if acc[2] is None:
                acc[2] = step
            acc[7], acc[8], acc[9] = step, None, nonfinite or "nan"
            continue
        if acc[4] is None or value < acc[4]:
            acc[3], acc[4] = step, value
        if acc[6] is None or value > acc[6]:
            acc[5], acc[6] = step, value
        acc[7], acc[8], acc[9] = step, value, None
    return out


def _runs(buckets: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted bucket numbers → [(first, last), ...], close neighbours merged into one run."""
    runs: list[tuple[int, int]] = []
    for b in buckets:
        if runs and b - runs[-1][1] <= _MERGE_GAP:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def _insert(dialect_name: str) -> Any:
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert


@lru_cache(maxsize=4)
def _statements(dialect_name: str) -> tuple[Any, Any]:
    """(bucket upsert, series upsert) that replace the stored rows, built once per dialect."""
    insert = _insert(dialect_name)
    bucket = insert(_bucket)
    bucket = bucket.on_conflict_do_update(
        index_elements=[_bucket.c.job_id, _bucket.c.key, _bucket.c.tier, _bucket.c.bucket],
        set_={name: getattr(bucket.excluded, name) for name in BUCKET_FIELDS},
    )
    series = insert(_series)
    series_fields = [c.name for c in _series.c if c.name not in ("job_id", "key")]
    series = series.on_conflict_do_update(
        index_elements=[_series.c.job_id, _series.c.key],
        set_={name: getattr(series.excluded, name) for name in series_fields},
    )
    return bucket, series


def _child_rows(
    session: Session, job_id: int, key: str, tier: int, lo: int, hi: int
) -> Iterable[tuple[int, Sequence[Any]]]:
    """(bucket at `tier`, child aggregate) for every child under buckets lo..hi of `tier`, in step order."""
    width = TIER_WIDTHS[tier - 1]
    if tier == 1:
        stmt = (
            select(_metric.c.step, _metric.c.value, _metric.c.nonfinite)
            .where(
                _metric.c.job_id == job_id,
                _metric.c.key == key,
                _metric.c.step >= lo * width,
                _metric.c.step < (hi + 1) * width,
            )
            .order_by(_metric.c.step)
        )
        yield from _raw_buckets(session.connection().execute(stmt), width).items()
        return
    stmt = (
        select(_bucket.c.bucket, *_BUCKET_COLUMNS)
        .where(
            _bucket.c.job_id == job_id,
            _bucket.c.key == key,
            _bucket.c.tier == tier - 1,
            _bucket.c.bucket >= lo * FANOUT,
            _bucket.c.bucket < (hi + 1) * FANOUT,
        )
        .order_by(_bucket.c.bucket)
    )
    for row in session.connection().execute(stmt):
        yield row[0] // FANOUT, row[1:]


def rebuild(session: Session, *, job_id: int, key: str, steps: Iterable[int]) -> None:
    """Recompute every bucket of every tier that holds one of `steps` from its children (replaced steps)."""
    bucket_upsert, _ = _statements(session.get_bind().dialect.name)
    affected = sorted({step // TIER_WIDTHS[0] for step in steps})
    for tier in range(1, len(TIER_WIDTHS) + 1):
        buckets: dict[int, Agg] = {}
        for lo, hi in _runs(affected):
            buckets.update(aggregate(_child_rows(session, job_id, key, tier, lo, hi)))
        rows = [_bucket_row(job_id, key, tier, bucket, agg) for bucket, agg in buckets.items()]
        if rows:
            session.connection().execute(bucket_upsert, rows)
        affected = sorted({b // FANOUT for b in affected})


def _bucket_row(job_id: int, key: str, tier: int, bucket: int, agg: Agg) -> dict[str, Any]:
    row = dict(zip(BUCKET_FIELDS, agg, strict=True))
    row.update(job_id=job_id, key=key, tier=tier, bucket=bucket)
    return row


def append_rows(job_id: int, key: str, points: list[Point3]) -> tuple[list[dict[str, Any]], Agg]:
    """Bucket rows (every tier) of points that all lie after the series' stored ones, and their total.

    Each row is what the new points add to their bucket; the merge upsert folds it into a stored bucket.
    """
    level = _raw_buckets(sorted(points), TIER_WIDTHS[0])
    rows = [_bucket_row(job_id, key, 1, bucket, agg) for bucket, agg in level.items()]
    for tier in range(2, len(TIER_WIDTHS) + 1):
        level = aggregate((bucket // FANOUT, agg) for bucket, agg in sorted(level.items()))
        rows.extend(_bucket_row(job_id, key, tier, bucket, agg) for bucket, agg in level.items())
    total = aggregate((0, agg) for _, agg in sorted(level.items()))[0]
    return rows, total


def _folded(existing: Any, new: Any, better: Any) -> Any:
    """A merge upsert's CASE: is the new min (or max) `better` than the stored one?"""
    return and_(new.is_not(None), or_(existing.is_(None), better))


@lru_cache(maxsize=4)
def _merge_statements(dialect_name: str) -> tuple[Any, Any]:
    """(bucket merge upsert, series merge upsert) for appended points: no read of the stored rows.

    In ON CONFLICT DO UPDATE every right-hand side sees the stored row before the update (both databases),
    so the min/max conditions and the values they pick agree. Ties keep the stored, earlier point.
    """
    insert = _insert(dialect_name)
    bucket = insert(_bucket)
    new, old = bucket.excluded, _bucket.c
    lower = _folded(old.min_value, new.min_value, new.min_value < old.min_value)
    higher = _folded(old.max_value, new.max_value, new.max_value > old.max_value)
    bucket = bucket.on_conflict_do_update(
        index_elements=[old.job_id, old.key, old.tier, old.bucket],
        set_={
            "points": old.points + new.points,
            "nonfinite_points": old.nonfinite_points + new.nonfinite_points,
            "nonfinite_step": func.coalesce(old.nonfinite_step, new.nonfinite_step),
            "min_step": case((lower, new.min_step), else_=old.min_step),
            "min_value": case((lower, new.min_value), else_=old.min_value),
            "max_step": case((higher, new.max_step), else_=old.max_step),
            "max_value": case((higher, new.max_value), else_=old.max_value),
            "last_step": new.last_step,
            "last_value": new.last_value,
            "last_nonfinite": new.last_nonfinite,
        },
    )
    series = insert(_series)
    snew, sold = series.excluded, _series.c
    series = series.on_conflict_do_update(
        index_elements=[sold.job_id, sold.key],
        set_={
            "points": sold.points + snew.points,
            "nonfinite_points": sold.nonfinite_points + snew.nonfinite_points,
            "last_step": snew.last_step,
            "last_value": snew.last_value,
            "last_nonfinite": snew.last_nonfinite,
            "min_value": case(
                (_folded(sold.min_value, snew.min_value, snew.min_value < sold.min_value), snew.min_value),
                else_=sold.min_value,
            ),
            "max_value": case(
                (_folded(sold.max_value, snew.max_value, snew.max_value > sold.max_value), snew.max_value),
                else_=sold.max_value,
            ),
        },
    )
    return bucket, series


def refresh_summary(session: Session, *, job_id: int, key: str, first_step: int) -> None:
    """Rewrite the series' summary row from its coarsest tier (a few dozen rows at ten million points)."""
    _, series_upsert = _statements(session.get_bind().dialect.name)
    stmt = (
        select(*_BUCKET_COLUMNS)
        .where(_bucket.c.job_id == job_id, _bucket.c.key == key, _bucket.c.tier == len(TIER_WIDTHS))
        .order_by(_bucket.c.bucket)
    )
    total = aggregate((0, row) for row in session.connection().execute(stmt)).get(0)
    if total is not None:
        session.connection().execute(series_upsert, [_series_row(job_id, key, total, first_step=first_step)])


def update_series(session: Session, *, job_id: int, points_by_key: dict[str, list[Point3]]) -> None:
    """After these raw points were stored (inserted or replaced): update tiers and summaries.

    Appends (every point after the series' stored ones: the usual batch) are merged into the tiers
    without reading anything: one executemany for all tiers and keys, one for the summaries. A batch
    that replaces or fills in steps rebuilds the buckets it touches from their children.
    """
    if not points_by_key:
        return
    known = {
        key: (first, last)
        for key, first, last in session.execute(
            select(_series.c.key, _series.c.first_step, _series.c.last_step).where(
                _series.c.job_id == job_id, _series.c.key.in_(list(points_by_key))
            )
        )
    }
    bucket_rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    for key, points in points_by_key.items():
        first = min(p[0] for p in points)
        first_known, last_known = known.get(key, (first, -1))
        if first > last_known:
            rows, total = append_rows(job_id, key, points)
            bucket_rows.extend(rows)
            series_rows.append(_series_row(job_id, key, total, first_step=min(first, first_known)))
        else:
            rebuild(session, job_id=job_id, key=key, steps=[p[0] for p in points])
            refresh_summary(session, job_id=job_id, key=key, first_step=min(first, first_known))
    if bucket_rows:
        bucket_merge, series_merge = _merge_statements(session.get_bind().dialect.name)
        connection = session.connection()
        connection.execute(bucket_merge, bucket_rows)
        connection.execute(series_merge, series_rows)


def _series_row(job_id: int, key: str, total: Agg, *, first_step: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "key": key,
        "points": total[0],
        "nonfinite_points": total[1],
        "first_step": first_step,
        "last_step": total[7],
        "last_value": total[8],
        "last_nonfinite": total[9],
        "min_value": total[4],
        "max_value": total[6],
    }


def rebuild_job(session: Session, *, job_id: int) -> None:
    """Build the tiers and summaries of every series of a job from its raw points (migration backfill)."""
    keys = [k for (k,) in session.execute(select(_metric.c.key).where(_metric.c.job_id == job_id).distinct())]
    for key in keys:
        stmt = (
            select(_metric.c.step, _metric.c.value, _metric.c.nonfinite)
            .where(_metric.c.job_id == job_id, _metric.c.key == key)
            .order_by(_metric.c.step)
        )
        # in step order and in chunks, so each chunk is an append and memory stays flat at any length
        rows = session.connection().execute(stmt.execution_options(yield_per=BACKFILL_CHUNK))
        for chunk in rows.partitions(BACKFILL_CHUNK):
            points = [(step, value, nonfinite) for step, value, nonfinite in chunk]
            update_series(session, job_id=job_id, points_by_key={key: points})
