"""Fault 8: 200 SSE connects and disconnects while jobs run; no leaked tasks or DB sessions, memory flat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.faults.harness import AppProcess, fake_config
from tests.waiting import wait_until

CHURNS = 200
AT_ONCE = 20
RSS_BOUND_MB = 25.0


async def _churn(url: str, paths: list[str], n: int) -> list[str]:
    """Open n streams (AT_ONCE at a time), read until their first data message, hang up; the event names."""
    semaphore = asyncio.Semaphore(AT_ONCE)
    seen: list[str] = []

    async def one(i: int) -> None:
        async with semaphore, httpx.AsyncClient(base_url=url, timeout=20) as client:
            async with client.stream("GET", paths[i % len(paths)]) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        seen.append(line.removeprefix("event: "))
                        break  # hang up mid-stream, as a closed browser tab does

    await asyncio.gather(*(one(i) for i in range(n)))
    return seen


def test_two_hundred_stream_connects_and_disconnects_leave_no_tasks_sessions_or_memory_behind(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(cpu_slots=2)
    jobs = [app.submit(fake_config("sleep=60 every=0.1")) for _ in range(2)]
    for job_id in jobs:
        app.wait_job(job_id, lambda j: (j["last_step"] or 0) >= 2, 30, "metrics flowing")
    paths = [f"/api/jobs/{jobs[0]}/stream", f"/api/jobs/{jobs[1]}/stream", "/api/stream"]

    asyncio.run(_churn(app.url, paths, AT_ONCE))  # warm-up: first-use allocations are not leaks

    def warm_up_over() -> dict[str, Any] | None:
        # the baseline is taken once the warm-up's streams have let go of their sessions and threads
        now: dict[str, Any] = app.get("/api/_debug/runtime")
        idle = now["db_pool"]["checked_out"] == 0 and now["thread_pool"]["borrowed"] == 0
        return now if idle else None

    before = wait_until(warm_up_over, 10, "the warm-up streams to end", interval=0.2)
    started = time.monotonic()
    seen = asyncio.run(_churn(app.url, paths, CHURNS))
    took = time.monotonic() - started
    assert len(seen) == CHURNS and set(seen) <= {"job", "jobs", "metrics", "events"}, set(seen)

    def settled() -> dict[str, Any] | None:
        # the two jobs keep POSTing: a sample with one of their requests in flight is not calm; a leak
        # never is. Threads and file descriptors are left out: the thread pool and the connection pool
        # grow on demand up to their bounds and keep what they made, which is not a leak.
        now: dict[str, Any] = app.get("/api/_debug/runtime")
        calm = (
            now["tasks"] <= before["tasks"]
            and now["db_pool"]["checked_out"] == 0
            and now["thread_pool"]["borrowed"] == 0
            and now["connections"] <= before["connections"]
        )
        return now if calm else None

    try:
        after = wait_until(settled, timeout=10, what="the streams' tasks and sessions to end", interval=0.2)
    except AssertionError:
        raise AssertionError(f"before: {before}\nnow: {app.get('/api/_debug/runtime')}") from None
    grew_mb = (after["rss_bytes"] - before["rss_bytes"]) / 1024**2
    assert grew_mb < RSS_BOUND_MB, f"RSS grew {grew_mb:.1f} MB over {CHURNS} streams ({before} → {after})"
    assert took < 60, f"{CHURNS} stream connects took {took:.0f} s"
    # the jobs were never disturbed by all that
    assert [app.job(j)["status"] for j in jobs] == ["running", "running"]
    for job_id in jobs:
        app.post(f"/api/jobs/{job_id}/cancel")
        assert app.wait_terminal(job_id, timeout=20)["status"] == "cancelled"
