"""Metric history at scale: chart reads from the tiers, the page's latest values, ingest through the writer.

    .venv/bin/python -m bench.metrics_scale --points 1000000

Every figure comes with a baseline measured in the same run, on the same data:
- chart read: the old path (every raw point fetched, then min/max downsampled in Python) against the
  tier read (app/metrics/queries.series), and GET /api/jobs/{id}/metrics?max_points=2000 end to end;
- zoom: a 10 % range, and a 1000-step range (raw);
- the job page's latest values: the old GROUP BY over the points against the metric_series row, and
  the job page's HTML;
- ingest, against a uvicorn subprocess on SQLite: one job posting 1000 points a POST, against a bare
  SQLite executemany of the same rows; then ten jobs posting at once (p50/p95 per POST).
The live-stream fan-out is measured by bench/soak.py (app CPU with and without viewers).
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import make_engine, make_session_factory
from app.main import create_app
from app.metrics import queries
from app.metrics.downsample import downsample_minmax
from app.metrics.tiers import rebuild_job
from app.migrate import upgrade
from app.settings import Settings
from tests.app.conftest import make_started_job
from tests.faults.harness import AppProcess

_OLD_LATEST = """
SELECT m.key, m.value, m.nonfinite FROM metric m
JOIN (SELECT key, max(step) AS step FROM metric WHERE job_id = :job GROUP BY key) newest
  ON m.key = newest.key AND m.step = newest.step
WHERE m.job_id = :job ORDER BY m.key
"""


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def series_rows(job_id: int, n: int, chunk: int = 100_000) -> Iterator[list[tuple[Any, ...]]]:
    """n loss points in chunks: a decaying loss with noise, one spike, one NaN and one inf."""
    rng = random.Random(18)
    for start in range(0, n, chunk):
        rows = []
        for step in range(start, min(n, start + chunk)):
            value: float | None = 2.0 * math.exp(-step / max(1, n / 5)) + rng.random() * 0.05
            nonfinite = None
            if step == n // 3:
                value = 1e6
            elif step == n // 2:
                value, nonfinite = None, "nan"
            elif step == (2 * n) // 3:
                value, nonfinite = None, "inf"
            rows.append((job_id, "loss", step, value, nonfinite, 1.7e9 + step))
        yield rows


def bare_insert(path: Path, chunks: Iterable[list[tuple[Any, ...]]]) -> tuple[int, float]:
    """(rows, seconds) of a bare sqlite3 executemany into the metric table (the ingest baseline)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    elapsed, count = 0.0, 0
    for rows in chunks:  # generating the rows is not timed
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO metric (job_id, key, step, value, nonfinite, ts) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        conn.execute("COMMIT")
        elapsed += time.perf_counter() - start
        count += len(rows)
    conn.close()
    return count, elapsed


def bench_reads(root: Path, points: int, out: list[str]) -> float:
    """Chart, zoom and latest-value reads over one job of `points` loss points; returns the bare rate."""
    settings = Settings(data_dir=root / "reads", scheduler_enabled=False, allowed_hosts=["testserver"])
    upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    factory = make_session_factory(engine)
    job_id = make_started_job(factory)
    count, bare_s = bare_insert(settings.data_dir / "tuneboard.db", series_rows(job_id, points))
    bare_rate = count / bare_s
    out.append(f"bare sqlite executemany: {count:,} rows in {bare_s:.2f} s = {bare_rate:,.0f} rows/s")
    start = time.perf_counter()
    with factory() as s:
        rebuild_job(s, job_id=job_id)
        s.commit()
    out.append(f"tier backfill (migration path) of {points:,} points: {time.perf_counter() - start:.1f} s")

    def old_read() -> Any:
        with factory() as s:
            pts = queries.raw_points(s, job_id=job_id, keys=["loss"])
            return {k: downsample_minmax(p, 2000) for k, p in pts.items()}

    def new_read() -> Any:
        with factory() as s:
            return queries.series(s, job_id=job_id, keys=["loss"], max_points=2000)

    got = new_read()["loss"]
    steps = {p[0]: p[1] for p in got}
    kept = steps.get(points // 3) == 1e6 and steps.get(points // 2, 0) is None
    old_s, new_s = timed(old_read, 1 if points > 2_000_000 else 3), timed(new_read, 7)
    out.append(
        f"chart read, {points:,} points → {len(got)} drawn: old full scan {old_s * 1000:.1f} ms, "
        f"tiers {new_s * 1000:.2f} ms: {old_s / new_s:.0f}x faster (spike and NaN kept: {kept})"
    )
    lo, hi = points // 2, points // 2 + points // 10

    def zoom() -> Any:
        with factory() as s:
            return queries.series(s, job_id=job_id, keys=["loss"], max_points=2000, from_step=lo, to_step=hi)

    def zoom_raw() -> Any:
        with factory() as s:
            return queries.series(s, job_id=job_id, keys=["loss"], from_step=lo, to_step=lo + 999)

    out.append(
        f"zoom read: 10% range {timed(zoom, 7) * 1000:.2f} ms; 1000-step range (raw) "
        f"{timed(zoom_raw, 7) * 1000:.2f} ms"
    )

    def old_latest() -> Any:
        with factory() as s:
            return s.execute(text(_OLD_LATEST), {"job": job_id}).all()

    def new_latest() -> Any:
        with factory() as s:
            return queries.latest_values(s, job_id=job_id)

    old_l, new_l = timed(old_latest, 1 if points > 2_000_000 else 3), timed(new_latest, 7)
    out.append(
        f"latest values: old GROUP BY {old_l * 1000:.1f} ms, metric_series {new_l * 1000:.3f} ms: "
        f"{old_l / new_l:.0f}x"
    )
    with TestClient(create_app(settings)) as client:
        client.get(f"/api/jobs/{job_id}/metrics?max_points=2000")
        api = timed(lambda: client.get(f"/api/jobs/{job_id}/metrics?max_points=2000").raise_for_status(), 7)
        page = timed(lambda: client.get(f"/jobs/{job_id}").raise_for_status(), 5)
    out.append(
        f"GET /api/jobs/{{id}}/metrics?max_points=2000: {api * 1000:.1f} ms (old full-scan read alone: "
        f"{old_s * 1000:.0f} ms); job page HTML {page * 1000:.1f} ms"
    )
    engine.dispose()
    return bare_rate


def bench_ingest_in_process(root: Path, out: list[str], batches: int = 20) -> None:
    """ingest_events alone (no HTTP), 1000 points a batch: raw points only against raw points + tiers."""
    from app.metrics import ingest
    from app.metrics.ingest import ingest_events, parse_batch
    from app.models import Job

    settings = Settings(data_dir=root / "inproc")
    upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    factory = make_session_factory(engine)

    def run(job_id: int) -> float:
        start = time.perf_counter()
        for b in range(batches):
            events = parse_batch(
                {
                    "events": [
                        {
                            "seq": b * 1000 + i + 1,
                            "kind": "metric",
                            "step": b * 1000 + i,
                            "payload": {"loss": 1.0 / (i + 1)},
                        }
                        for i in range(1000)
                    ]
                },
                max_events=5000,
            )
            with factory() as s:
                job = s.get(Job, job_id)
                assert job is not None
                ingest_events(s, job=job, events=events)
                s.commit()
        return (time.perf_counter() - start) / batches

    real = ingest.update_series
    times: dict[str, list[float]] = {"raw": [], "tiers": []}
    for rep in range(2):
        ingest.update_series = lambda *a, **k: None  # type: ignore[assignment]
        times["raw"].append(run(make_started_job(factory, name=f"raw{rep}")))
        ingest.update_series = real
        times["tiers"].append(run(make_started_job(factory, name=f"tiers{rep}")))
    raw, tiers = min(times["raw"]), min(times["tiers"])
    out.append(
        f"ingest_events in process, 1000 points/batch: raw points only {raw * 1000:.1f} ms, raw + tiers "
        f"{tiers * 1000:.1f} ms per batch ({tiers / raw:.2f}x; {1000 / tiers:,.0f} points/s)"
    )
    engine.dispose()


def _post_all(url: str, job_id: int, token: str, batches: int, per: int, latencies: list[float]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        for b in range(batches):
            events = [
                {
                    "seq": b * per + i + 1,
                    "kind": "metric",
                    "step": b * per + i,
                    "payload": {"loss": 1.0 / (i + 1)},
                }
                for i in range(per)
            ]
            start = time.perf_counter()
            r = http.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=headers)
            latencies.append(time.perf_counter() - start)
            r.raise_for_status()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_ingest(root: Path, bare_rate: float, batches: int, out: list[str]) -> None:
    """One job, then ten at once, posting 1000-point batches to a uvicorn subprocess."""
    app = AppProcess(data_dir=root / "ingest", extra_env={"TUNEBOARD_SCHEDULER_ENABLED": "false"})
    app.start()
    try:
        settings = Settings(data_dir=root / "ingest")
        engine = make_engine(settings.sqlalchemy_url)
        factory = make_session_factory(engine)
        jobs = [make_started_job(factory, token=f"t{i}", name=f"j{i}") for i in range(11)]
        lat: list[float] = []
        start = time.perf_counter()
        _post_all(app.url, jobs[0], "t0", batches, 1000, lat)
        one_s = time.perf_counter() - start
        rate = batches * 1000 / one_s
        out.append(
            f"ingest, 1 job, 1000 points/POST: {rate:,.0f} points/s = {rate / bare_rate:.2f}x bare "
            "executemany; "
            f"p50 {statistics.median(lat) * 1000:.0f} ms, p95 {_p(lat, 0.95) * 1000:.0f} ms"
        )
        for per, posts in ((1000, max(2, batches // 5)), (10, 100)):
            _ten_jobs(app.url, jobs[1:], per, posts, _p(lat, 0.95), out)
            jobs = [make_started_job(factory, token=f"t{i}", name=f"k{i}") for i in range(11)]
        engine.dispose()
    finally:
        app.close()


def _ten_jobs(url: str, jobs: list[int], per: int, posts: int, alone_p95: float, out: list[str]) -> None:
    """Ten jobs posting `posts` batches of `per` points at once (their tokens are t1..t10)."""
    lats: list[list[float]] = [[] for _ in range(10)]
    threads = [
        threading.Thread(target=_post_all, args=(url, jobs[i], f"t{i + 1}", posts, per, lats[i]))
        for i in range(10)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for lt in lats for x in lt]
    out.append(
        f"ingest, 10 jobs at once, {per} points/POST: {10 * posts * per / elapsed:,.0f} points/s; "
        f"p50 {statistics.median(flat) * 1000:.0f} ms, p95 {_p(flat, 0.95) * 1000:.0f} ms "
        f"(1 job alone at 1000 points/POST: p95 {alone_p95 * 1000:.0f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: run the read and ingest benchmarks, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="points in the read benchmark's series")
    parser.add_argument("--batches", type=int, default=50, help="1000-point POSTs of the single-job ingest")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tuneboard-scale-"))
    out: list[str] = []
    try:
        bare_rate = bench_reads(root, args.points, out)
        print("\n".join(out), flush=True)
        if not args.skip_ingest:
            out.clear()
            bench_ingest_in_process(root, out)
            bench_ingest(root, bare_rate, args.batches, out)
            print("\n".join(out), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
