"""bench/jobs_list.py runs end to end on a small catalogue (the real one seeds 10,000 runs)."""

from __future__ import annotations

import pytest

from bench import jobs_list


def test_the_benchmark_times_every_request_against_its_unindexed_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert jobs_list.main(["--runs", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for label, _path, _headers in jobs_list.REQUESTS:
        assert label in out
    assert "indexed: seeded 300 runs" in out and "unindexed: seeded 300 runs" in out
    assert "slowest indexed request:" in out
