"""A bounded soak of the real app: N concurrent jobs reporting metrics, V live viewers on their SSE streams.

    .venv/bin/python -m bench.soak --jobs 10 --viewers 100 --duration 180

The app runs as a uvicorn subprocess (scheduler on, N CPU slots) and the jobs are the fake trainer
(tests/fakes/fake_trainer.py): real processes that spool and POST a loss point every --interval
seconds through the real reporter, so the app's ingest, database and streams do the real work while
no CPU goes to training. Each viewer follows one job's /api/jobs/{id}/stream from start to `end`,
reconnecting with Last-Event-ID if a stream drops. At the end it checks that every point each worker
spooled is stored once and reached every viewer of that job, counts errors, and prints figures:
delivery latency (worker timestamp → viewer), app memory over time, tasks and DB connections left.
tests/faults/test_soak.py runs a short version (3 jobs × 20 viewers × 15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from contract.protocol import read_spool
from tests.faults.harness import AppProcess, fake_config, spooled_metrics

MB = 1024**2


@dataclass
class Viewer:
    """One SSE client following one job to its end."""

    job_id: int
    received: dict[int, float] = field(default_factory=dict)  # loss step → wall clock of arrival
    messages: int = 0
    connects: int = 0
    errors: list[str] = field(default_factory=list)
    final_status: str | None = None
    ended: bool = False


@dataclass
class SoakReport:
    """Figures of one soak run (see `summary()`)."""

    jobs: int
    viewers: int
    duration_s: float
    interval_s: float
    wall_s: float = 0.0
    points_spooled: int = 0
    points_stored: int = 0
    points_missing_in_db: int = 0
    points_duplicated_in_db: int = 0
    points_delivered: int = 0
    points_not_delivered: int = 0
    viewers_not_ended: int = 0
    job_statuses: dict[str, int] = field(default_factory=dict)
    sse_messages: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    app_cpu_pct: float = 0.0  # the app process's CPU (user + system) over the run, % of one core
    runtime_after: dict[str, Any] = field(default_factory=dict)
    runtime_before: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> float:
        """RSS at the end minus RSS once the run was under way (first quarter): the 'flat' check."""
        if len(self.rss_mb) < 2:
            return 0.0
        settled = [mb for t, mb in self.rss_mb if t >= self.duration_s * 0.25] or [self.rss_mb[0][1]]
        return self.rss_mb[-1][1] - settled[0]

    @property
    def ok(self) -> bool:
        """No errors, nothing lost or duplicated, every viewer saw every point and the end."""
        return (
            not self.errors
            and self.points_missing_in_db == 0
            and self.points_duplicated_in_db == 0
            and self.points_not_delivered == 0
            and self.viewers_not_ended == 0
            and self.job_statuses == {"succeeded": self.jobs}
        )

    def summary(self) -> str:
        """The figures as readable lines."""
        rss = [mb for _, mb in self.rss_mb]
        lines = [
            f"soak: {self.jobs} jobs × {self.viewers} viewers, jobs run {self.duration_s:g} s "
            f"emitting a point every {self.interval_s:g} s; wall {self.wall_s:.0f} s",
            f"  job statuses: {self.job_statuses}",
            f"  points: {self.points_spooled} spooled, {self.points_stored} stored, "
            f"{self.points_missing_in_db} missing, {self.points_duplicated_in_db} duplicated",
            f"  delivered to viewers: {self.points_delivered} point-deliveries, "
            f"{self.points_not_delivered} missed, {self.viewers_not_ended} viewers without `end`",
            f"  SSE messages received: {self.sse_messages}; reconnects: {self.reconnects}; "
            f"errors: {len(self.errors)}" + (f" e.g. {self.errors[:3]}" if self.errors else ""),
            f"  app CPU over the run: {self.app_cpu_pct:.0f}% of one core",
            "  delivery latency (worker → viewer) ms: "
            + ", ".join(f"{k} {v:.0f}" for k, v in self.latency_ms.items()),
            f"  app RSS MB: start {rss[0]:.1f}, peak {max(rss):.1f}, end {rss[-1]:.1f}; "
            f"growth after the first quarter {self.rss_growth_mb:+.1f}"
            if rss
            else "  app RSS: not sampled",
            f"  app after: tasks {self.runtime_after.get('tasks')} "
            f"(before {self.runtime_before.get('tasks')}), "
            f"DB connections checked out {self.runtime_after.get('db_pool', {}).get('checked_out')}, "
            f"threads {self.runtime_after.get('threads')}",
            f"  app tasks after: {', '.join(self.runtime_after.get('task_names', []))}",
            f"  verdict: {'OK' if self.ok else 'FAILED'}",
        ]
        return "\n".join(lines)


async def _follow(client: httpx.AsyncClient, viewer: Viewer, deadline: float) -> None:
    """Follow one job's stream to `end`, resuming with Last-Event-ID after a drop."""
    last_id: str | None = None
    while not viewer.ended and time.monotonic() < deadline:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        viewer.connects += 1
        try:
            async with client.stream("GET", f"/api/jobs/{viewer.job_id}/stream", headers=headers) as response:
                if response.status_code != 200:
                    viewer.errors.append(f"job {viewer.job_id}: stream answered {response.status_code}")
                    await asyncio.sleep(0.5)
                    continue
                event, data = "", ""
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        last_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and event:
                        _handle(viewer, event, data)
                        event, data = "", ""
                        if viewer.ended:
                            return
        except httpx.HTTPError as exc:
            viewer.errors.append(f"job {viewer.job_id}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)


def _handle(viewer: Viewer, event: str, data: str) -> None:
    viewer.messages += 1
    now = time.time()
    if event == "metrics":
        for step, _value in json.loads(data)["series"].get("loss", []):
            viewer.received.setdefault(int(step), now)
    elif event == "job":
        viewer.final_status = json.loads(data)["status"]
    elif event == "end":
        viewer.ended = True
    elif event == "error":
        viewer.errors.append(f"job {viewer.job_id}: stream error {data}")


async def _sample_memory(app: AppProcess, report: SoakReport, started: float, stop: asyncio.Event) -> None:
    assert app.proc is not None
    proc = psutil.Process(app.proc.pid)
    cpu_start, wall_start = sum(proc.cpu_times()[:2]), time.monotonic()
    while not stop.is_set():
        report.rss_mb.append((time.monotonic() - started, proc.memory_info().rss / MB))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
    cpu = sum(proc.cpu_times()[:2]) - cpu_start
    report.app_cpu_pct = 100.0 * cpu / max(1e-9, time.monotonic() - wall_start)


async def _drive(app: AppProcess, report: SoakReport, job_ids: list[int]) -> list[Viewer]:
    viewers = [Viewer(job_id=job_ids[i % len(job_ids)]) for i in range(report.viewers)]
    limits = httpx.Limits(max_connections=report.viewers + 10, max_keepalive_connections=report.viewers + 10)
    started = time.monotonic()
    deadline = started + report.duration_s + 120
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_memory(app, report, started, stop))
    timeout = httpx.Timeout(30.0, read=60.0)
    async with httpx.AsyncClient(base_url=app.url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(_follow(client, v, deadline) for v in viewers))
        if not viewers:  # the no-viewer baseline: the CPU of ingest alone over the jobs' run
            await asyncio.sleep(report.duration_s)
    stop.set()
    await sampler
    return viewers


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_soak(
    *,
    jobs: int,
    viewers: int,
    duration_s: float,
    interval_s: float = 0.5,
    batch_s: float = 0.25,
    data_dir: Path | None = None,
) -> SoakReport:
    """Run one soak against a fresh app in `data_dir` (a temporary one by default) and measure it."""
    own_dir = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="tuneboard-soak-")) if data_dir is None else data_dir
    report = SoakReport(jobs=jobs, viewers=viewers, duration_s=duration_s, interval_s=interval_s)
    # the stream's production batch interval, not the tests' faster one: the soak measures the real thing
    app = AppProcess(
        data_dir=root / "data", cpu_slots=jobs, extra_env={"TUNEBOARD_SSE_BATCH_INTERVAL_S": str(batch_s)}
    )
    began = time.monotonic()
    try:
        app.start()
        report.runtime_before = app.get("/api/_debug/runtime")
        behaviour = f"sleep={duration_s:g} every={interval_s:g}"
        job_ids = [app.submit(fake_config(f"{behaviour} soak-{i}")) for i in range(jobs)]
        followed = asyncio.run(_drive(app, report, job_ids))
        for job_id in job_ids:
            app.wait_terminal(job_id, timeout=60)
        report.runtime_after = _settled_runtime(app, report.runtime_before, timeout=10.0)
        _verify(app, report, job_ids, followed)
    finally:
        report.wall_s = time.monotonic() - began
        app.close()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _settled_runtime(app: AppProcess, before: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The app's runtime counts once its streams wound down (or as they are after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        now: dict[str, Any] = app.get("/api/_debug/runtime")
        calm = now["tasks"] <= before["tasks"] and now["db_pool"]["checked_out"] == 0
        if calm or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def _verify(app: AppProcess, report: SoakReport, job_ids: list[int], followed: list[Viewer]) -> None:
    stored_steps: dict[int, set[int]] = {}
    spool_ts: dict[int, dict[int, float]] = {}
    statuses: dict[str, int] = {}
    for job_id in job_ids:
        status = app.job(job_id)["status"]
        statuses[status] = statuses.get(status, 0) + 1
        rd = app.run_dir(job_id)
        spooled = {step for key, step in spooled_metrics(rd) if key == "loss"}
        rows = [(key, step) for key, step, _, _ in app.metric_rows(job_id) if key == "loss"]
        stored = {step for _, step in rows}
        report.points_spooled += len(spooled)
        report.points_stored += len(rows)
        report.points_duplicated_in_db += len(rows) - len(stored)
        report.points_missing_in_db += len(spooled - stored)
        stored_steps[job_id] = stored
        spool_ts[job_id] = {
            int(e["step"]): float(e["ts"]) for e in read_spool(rd.events) if "loss" in e.get("payload", {})
        }
    report.job_statuses = statuses
    latencies: list[float] = []
    for viewer in followed:
        expected = stored_steps[viewer.job_id]
        report.points_delivered += len(set(viewer.received) & expected)
        report.points_not_delivered += len(expected - set(viewer.received))
        report.viewers_not_ended += 0 if viewer.ended and viewer.final_status == "succeeded" else 1
        report.sse_messages += viewer.messages
        report.reconnects += viewer.connects - 1
        report.errors.extend(viewer.errors)
        stamps = spool_ts[viewer.job_id]
        latencies += [(at - stamps[s]) * 1000 for s, at in viewer.received.items() if s in stamps]
    if latencies:
        report.latency_ms = {
            "p50": statistics.median(latencies),
            "p95": _percentile(latencies, 0.95),
            "max": max(latencies),
        }


def main(argv: list[str] | None = None) -> int:
    """Command line: run a soak, print its figures, exit 1 when it failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="concurrent jobs (each gets a CPU slot)")
    parser.add_argument("--viewers", type=int, default=100, help="SSE viewers, spread over the jobs")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds each job runs")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a job's metric points")
    args = parser.parse_args(argv)
    report = run_soak(
        jobs=args.jobs, viewers=args.viewers, duration_s=args.duration, interval_s=args.interval
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
