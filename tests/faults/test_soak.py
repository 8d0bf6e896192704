"""The short soak (bench/soak.py): 3 jobs × 20 live viewers × 10 s; nothing lost, app memory flat."""

from __future__ import annotations

from pathlib import Path

from bench.soak import run_soak

RSS_GROWTH_BOUND_MB = 30.0


def test_a_short_soak_delivers_every_point_to_every_viewer_without_errors_or_growth(tmp_path: Path) -> None:
    report = run_soak(jobs=3, viewers=20, duration_s=10, interval_s=0.25, data_dir=tmp_path)
    assert report.ok, report.summary()
    assert report.points_stored == report.points_spooled >= 3 * 10 / 0.25 * 0.8, report.summary()
    assert report.rss_growth_mb < RSS_GROWTH_BOUND_MB, report.summary()
    assert report.runtime_after["db_pool"]["checked_out"] == 0, report.summary()
    assert report.runtime_after["tasks"] <= report.runtime_before["tasks"], report.summary()
