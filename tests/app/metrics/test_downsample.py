"""Downsampling keeps what a reader must see (spikes, non-finite values) within the point budget."""

from __future__ import annotations

import math
import random

import pytest
from fastapi.testclient import TestClient

from app.metrics.downsample import downsample_lttb, downsample_minmax


def noisy_series(n: int, seed: int = 0) -> list[tuple[int, float | None]]:
    rng = random.Random(seed)
    return [(i, 2.0 * math.exp(-i / (n / 3)) + rng.uniform(-0.05, 0.05)) for i in range(n)]


def test_a_single_spike_in_100k_points_survives_minmax() -> None:
    points = noisy_series(100_000)
    points[73_421] = (73_421, 50.0)
    out = downsample_minmax(points, 2000)
    assert len(out) <= 2000
    assert (73_421, 50.0) in out


def test_a_single_dip_survives_too() -> None:
    points = noisy_series(100_000, seed=1)
    points[12_345] = (12_345, -40.0)
    assert (12_345, -40.0) in downsample_minmax(points, 1000)


@pytest.mark.parametrize(
    "n,max_points",
    [(100_000, 2000), (100_000, 999), (5001, 2000), (2001, 2000), (10, 3), (1000, 8), (1000, 9)],
)
def test_the_output_never_exceeds_the_budget_and_stays_in_step_order(n: int, max_points: int) -> None:
    points = noisy_series(n)
    out = downsample_minmax(points, max_points)
    assert len(out) <= max_points
    steps = [s for s, _ in out]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert out[0] == points[0] and out[-1] == points[-1]  # where the run started and its latest value


def test_a_short_series_is_returned_unchanged() -> None:
    points = noisy_series(500)
    assert downsample_minmax(points, 2000) == points


def test_tiny_budgets_with_gaps_still_hold() -> None:
    points = noisy_series(1000)
    points[500] = (500, None)
    for budget in range(2, 12):
        assert len(downsample_minmax(points, budget)) <= budget


def test_a_non_finite_point_survives_with_the_budget_held() -> None:
    points = noisy_series(100_000)
    points[55_555] = (55_555, None)
    out = downsample_minmax(points, 2000)
    assert len(out) <= 2000
    assert (55_555, None) in out


def test_lttb_keeps_the_budget_the_ends_and_a_large_spike() -> None:
    points = noisy_series(100_000)
    points[40_000] = (40_000, 80.0)
    out = downsample_lttb(points, 1000)
    assert len(out) <= 1000
    assert out[0] == points[0] and out[-1] == points[-1]
    assert (40_000, 80.0) in out


def test_the_metrics_endpoint_downsamples_stored_points(client: TestClient, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    events = [
        {
            "seq": i + 1,
            "kind": "metric",
            "step": i,
            "ts": 1.0,
            "payload": {"loss": 100.0 if i == 4321 else 1.0},
        }
        for i in range(5000)
    ]
    assert (
        client.post(
            f"/api/jobs/{job_id}/events",
            json={"events": events},
            headers={"Authorization": "Bearer test-token"},
        ).status_code
        == 200
    )
    loss = client.get(f"/api/jobs/{job_id}/metrics?keys=loss&max_points=300").json()["series"]["loss"]
    assert len(loss) <= 300
    assert [4321, 100.0] in loss
    after = client.get(f"/api/jobs/{job_id}/metrics?keys=loss&after_step=4990").json()["series"]["loss"]
    assert [p[0] for p in after] == list(range(4991, 5000))
