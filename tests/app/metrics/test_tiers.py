"""The multi-resolution tiers against brute force: random series with NaN/inf, spikes and replaced steps."""

from __future__ import annotations

import math
import random
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.metrics import queries
from app.metrics.tiers import TIER_WIDTHS
from app.metrics.zoom import choose_tier
from app.models import MetricBucket, MetricPoint, MetricSeries

AUTH = {"Authorization": "Bearer test-token"}


def post(client: TestClient, job_id: int, events: list[dict[str, Any]]) -> None:
    r = client.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200, r.text


def random_value(rng: random.Random) -> float | str:
    roll = rng.random()
    if roll < 0.02:
        return rng.choice(["nan", "inf", "-inf"])
    if roll < 0.03:
        return rng.choice([1e6, -1e6])  # a spike
    return round(rng.gauss(0, 1), 6)


def stored(
    factory: sessionmaker[Session], job_id: int, key: str
) -> dict[int, tuple[float | None, str | None]]:
    with factory() as s:
        rows = s.execute(
            select(MetricPoint.step, MetricPoint.value, MetricPoint.nonfinite).where(
                MetricPoint.job_id == job_id, MetricPoint.key == key
            )
        )
        return {step: (value, nonfinite) for step, value, nonfinite in rows}


def brute_buckets(
    points: dict[int, tuple[float | None, str | None]], width: int
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for step in sorted(points):
        value, nonfinite = points[step]
        b = out.setdefault(
            step // width,
            {
                "points": 0,
                "nonfinite_points": 0,
                "nonfinite_step": None,
                "min": None,
                "max": None,
                "last": None,
            },
        )
        b["points"] += 1
        if value is None:
            b["nonfinite_points"] += 1
            if b["nonfinite_step"] is None:
                b["nonfinite_step"] = step
        else:
            if b["min"] is None or value < b["min"][1]:
                b["min"] = (step, value)
            if b["max"] is None or value > b["max"][1]:
                b["max"] = (step, value)
        b["last"] = (step, value, nonfinite)
    return out


def check_tiers(factory: sessionmaker[Session], job_id: int, key: str) -> None:
    points = stored(factory, job_id, key)
    with factory() as s:
        for tier, width in enumerate(TIER_WIDTHS, start=1):
            rows = {
                r.bucket: r
                for r in s.scalars(
                    select(MetricBucket).where(
                        MetricBucket.job_id == job_id, MetricBucket.key == key, MetricBucket.tier == tier
                    )
                )
            }
            expected = brute_buckets(points, width)
            assert set(rows) == set(expected), f"tier {tier}"
            for b, want in expected.items():
                got = rows[b]
                assert got.points == want["points"], (tier, b)
                assert got.nonfinite_points == want["nonfinite_points"], (tier, b)
                assert got.nonfinite_step == want["nonfinite_step"], (tier, b)
                assert (got.min_step, got.min_value) == (want["min"] or (None, None)), (tier, b)
                assert (got.max_step, got.max_value) == (want["max"] or (None, None)), (tier, b)
                assert (got.last_step, got.last_value, got.last_nonfinite) == want["last"], (tier, b)
        summary = s.get(MetricSeries, (job_id, key))
        assert summary is not None
        finite = [v for v, _ in points.values() if v is not None]
        assert summary.points == len(points)
        assert summary.first_step == min(points) and summary.last_step == max(points)
        assert (summary.last_value, summary.last_nonfinite) == points[max(points)]
        assert summary.min_value == min(finite) and summary.max_value == max(finite)


def test_tiers_match_brute_force_with_nonfinite_values_spikes_and_replaced_steps(
    client: TestClient, started_job, session_factory
) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    rng = random.Random(18)
    seq = 0
    step = 0
    for _ in range(12):  # appends in batches of varying size
        events = []
        for _ in range(rng.randint(1, 700)):
            seq += 1
            step += rng.choice([1, 1, 1, 3])
            events.append(
                {"seq": seq, "kind": "metric", "step": step, "payload": {"loss": random_value(rng)}}
            )
        post(client, job_id, events)
    check_tiers(session_factory, job_id, "loss")
    # a guard rollback / resume re-sends earlier steps with new values, plus scattered replacements
    events = []
    for s in [*range(step // 2, step // 2 + 300), *rng.sample(range(step), 40), step]:
        seq += 1
        events.append({"seq": seq, "kind": "metric", "step": s, "payload": {"loss": random_value(rng)}})
    events.append({"seq": seq + 1, "kind": "metric", "step": 3, "payload": {"loss": 5e6}})  # a new spike
    post(client, job_id, events)
    check_tiers(session_factory, job_id, "loss")


def test_a_chart_read_keeps_every_spike_and_nonfinite_point_at_every_zoom(
    client: TestClient, started_job, session_factory
) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    rng = random.Random(7)
    n = 40_000
    values: dict[int, float | str] = {s: round(math.sin(s / 500) + rng.random() * 0.01, 6) for s in range(n)}
    values[12_345] = 1e9
    values[30_001] = "nan"
    values[7] = "-inf"
    values[39_998] = -1e9
    for start in range(0, n, 1000):
        post(
            client,
            job_id,
            [
                {"seq": s + 1, "kind": "metric", "step": s, "payload": {"loss": values[s]}}
                for s in range(start, start + 1000)
            ],
        )
    with session_factory() as s:
        whole = queries.series(s, job_id=job_id, keys=["loss"], max_points=2000)["loss"]
        assert 2 < len(whole) <= 2000
        steps = dict((p[0], p[1]) for p in whole)
        assert steps[12_345] == 1e9 and steps[39_998] == -1e9
        assert steps[30_001] is None and steps[7] is None
        assert whole[-1] == [n - 1, values[n - 1]]  # ends at the latest value
        # zoom: only points in range, spikes inside it kept
        for lo, hi in [(12_000, 31_000), (12_340, 12_350), (100, 39_999), (29_999, 30_100)]:
            part = queries.series(s, job_id=job_id, keys=["loss"], max_points=300, from_step=lo, to_step=hi)
            got = dict((p[0], p[1]) for p in part["loss"])
            assert len(part["loss"]) <= 300
            assert all(lo <= step <= hi for step in got)
            for spike in (12_345, 30_001, 39_998):
                if lo <= spike <= hi:
                    assert spike in got, (lo, hi, spike)
            finite = [v for st, v in values.items() if lo <= st <= hi and not isinstance(v, str)]
            assert max(v for v in got.values() if v is not None) == max(finite)
            assert min(v for v in got.values() if v is not None) == min(finite)


def test_the_tier_read_picks_the_finest_tier_within_the_budget() -> None:
    assert choose_tier(1500, 2000) == 0
    assert choose_tier(1_000_000, 2000) == 4  # 1M / 4096 = 245 buckets ≤ 1000; 1M / 512 > 1000
    assert choose_tier(10_000_000, 2000) == 5
    assert choose_tier(2**31, 2000) == len(TIER_WIDTHS)


def test_the_job_page_latest_values_come_from_the_series_summary(
    client: TestClient, started_job, session_factory
) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    post(
        client,
        job_id,
        [
            {"seq": 1, "kind": "metric", "step": 1, "payload": {"loss": 2.0, "grad_norm": 1.0}},
            {"seq": 2, "kind": "metric", "step": 2, "payload": {"loss": 1.5, "grad_norm": "inf"}},
            {"seq": 3, "kind": "metric", "step": 1, "payload": {"loss": 9.0}},  # replaced, not the newest
        ],
    )
    with session_factory() as s:
        # the raw points are gone from this query's path: it must read metric_series
        s.execute(MetricPoint.__table__.delete().where(MetricPoint.job_id == job_id))
        latest = queries.latest_values(s, job_id=job_id)
        assert latest["loss"] == 1.5
        assert math.isinf(latest["grad_norm"] or 0.0)
        assert queries.metric_keys(s, job_id=job_id) == ["grad_norm", "loss"]
        s.rollback()


def test_the_backfill_builds_tiers_and_summaries_of_runs_stored_before_them(
    session_factory: sessionmaker[Session], started_job
) -> None:  # type: ignore[no-untyped-def]
    # raw points written straight to the table, as runs stored before migration 0006 have them
    from app.metrics.tiers import BACKFILL_CHUNK, rebuild_job

    job_id = started_job()
    rng = random.Random(5)
    rows = []
    for step in range(BACKFILL_CHUNK + 3000):  # more than one chunk of the backfill
        value = random_value(rng)
        finite = not isinstance(value, str)
        rows.append(
            {
                "job_id": job_id,
                "key": "loss",
                "step": step * 2,
                "value": value if finite else None,
                "nonfinite": None if finite else value,
                "ts": 1.0,
            }
        )
    with session_factory() as s:
        s.execute(MetricPoint.__table__.insert(), rows)
        s.commit()
        assert s.get(MetricSeries, (job_id, "loss")) is None
        rebuild_job(s, job_id=job_id)  # what migration 0006 runs for every job with points
        s.commit()
    check_tiers(session_factory, job_id, "loss")
