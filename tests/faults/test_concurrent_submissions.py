"""Fault 7: 50 submissions at once; exactly 50 jobs, each launched once, CPU slots never oversubscribed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx

from tests.faults.harness import AppProcess, fake_config
from tests.waiting import wait_until

SUBMISSIONS = 50
CPU_SLOTS = 3


async def _submit_all(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        requests = [client.post("/api/jobs", json=fake_config(f"sleep=0.2 submission-{i}")) for i in range(n)]
        return list(await asyncio.gather(*requests))


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def test_fifty_concurrent_submissions_make_fifty_jobs_each_run_once_within_the_cpu_slots(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(cpu_slots=CPU_SLOTS)
    responses = asyncio.run(_submit_all(app.url, SUBMISSIONS))
    assert [r.status_code for r in responses] == [201] * SUBMISSIONS, [r.text for r in responses[:3]]
    ids = sorted(r.json()["id"] for r in responses)
    assert len(set(ids)) == SUBMISSIONS

    def all_done() -> list[dict[str, object]] | None:
        jobs: list[dict[str, object]] = app.get("/api/jobs", params={"limit": 1000})
        finished = all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs)
        return jobs if finished else None

    jobs = wait_until(all_done, timeout=120, what="every job to finish", interval=0.5)
    assert sorted(int(j["id"]) for j in jobs) == ids  # exactly these 50, no more
    assert {j["status"] for j in jobs} == {"succeeded"}, [j["failure_reason"] for j in jobs][:5]
    assert {j["attempt"] for j in jobs} == {1}

    intervals: list[tuple[float, float]] = []
    for job_id in ids:
        lines = (app.run_dir(job_id).root / "launches.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        starts = [r["start"] for r in records if "start" in r]
        ends = [r["end"] for r in records if "end" in r]
        assert len(starts) == 1 and len(ends) == 1, f"job {job_id} was launched {len(starts)} times"
        intervals.append((starts[0], ends[0]))
    peak = _max_overlap(intervals)
    assert peak <= CPU_SLOTS, f"{peak} fake trainers ran at once on {CPU_SLOTS} CPU slots"
    assert peak >= 2, "the jobs ran one by one: the slots were not used, so this test proves little"
    assert app.get("/api/health")["scheduler"]["free_cpu_slots"] == CPU_SLOTS
