"""One poller per job: many viewers, one database read per tick, every point exactly once to each."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import anyio
import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.metrics import hub
from app.metrics.ingest import ingest_events, parse_batch
from app.metrics.stream import JobCursor
from app.models import Job
from tests.app.conftest import set_status
from tests.waiting import wait_until

AUTH = {"Authorization": "Bearer test-token"}


def metric(seq: int, step: int, **values: float) -> dict[str, Any]:
    return {"seq": seq, "kind": "metric", "step": step, "ts": 1.0, "payload": values}


def loss_points(frames: list[str], key: str = "loss") -> list[tuple[int, float]]:
    """The points of `key` in these SSE messages, in order."""
    out: list[tuple[int, float]] = []
    for frame in frames:
        lines = frame.strip().splitlines()
        if "event: metrics" not in lines:
            continue
        data = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        out.extend((step, value) for step, value in data["series"].get(key, []))
    return out


def test_many_viewers_share_one_poller_and_each_gets_every_point_once(
    live_server, started_job, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ticks: list[float] = []
    real_tick = hub.JobHub.tick

    def counting_tick(*args: Any) -> Any:
        ticks.append(time.monotonic())
        return real_tick(*args)

    monkeypatch.setattr(hub.JobHub, "tick", counting_tick)
    job_id = started_job()
    viewers = 30
    got: list[list[tuple[int, float]]] = [[] for _ in range(viewers)]
    ended = [False] * viewers
    joined = [False] * viewers

    async def view(i: int) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url, timeout=30) as http,
            http.stream("GET", f"/api/jobs/{job_id}/stream") as r,
        ):
            event, data = "", ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    joined[i] = True
                    if event == "metrics":
                        got[i].extend((s, v) for s, v in json.loads(data)["series"].get("loss", []))
                    elif event == "end":
                        ended[i] = True
                        return
                    event, data = "", ""

    async def all_viewers() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(viewers):
                tg.start_soon(view, i)

    thread = threading.Thread(target=anyio.run, args=(all_viewers,))
    thread.start()
    wait_until(lambda: all(joined), 20, "every viewer to get its first message", interval=0.05)
    start = time.monotonic()
    seq = 0
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        for step in range(1, 61):
            seq += 1
            r = http.post(
                f"/api/jobs/{job_id}/events",
                json={"events": [metric(seq, step, loss=step / 10)]},
                headers=AUTH,
            )
            assert r.status_code == 200
            if step % 10 == 0:
                time.sleep(0.1)  # a few ticks apart
    factory = live_server.app.state.session_factory
    set_status(factory, job_id, JobStatus.RUNNING)
    set_status(factory, job_id, JobStatus.SUCCEEDED)
    thread.join(30)
    elapsed = time.monotonic() - start
    assert all(ended), "every viewer got `end`"
    want = [(step, step / 10) for step in range(1, 61)]
    for i in range(viewers):
        assert got[i] == want, f"viewer {i}: lost or duplicated points"
    # one read per tick for all thirty viewers (per viewer it would be thirty times as many)
    interval = live_server.settings.sse_batch_interval_s
    assert len(ticks) <= (elapsed + 1.0) / interval + 10, (len(ticks), elapsed)


def test_a_slow_viewer_is_dropped_and_resumes_exactly_without_holding_up_the_others(
    session_factory: sessionmaker[Session], started_job, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(hub, "MAX_BACKLOG", 3)
    job_id = started_job()
    seq = 0

    def ingest(step: int, **values: float) -> None:
        nonlocal seq
        seq += 1
        with session_factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            ingest_events(
                s, job=job, events=parse_batch({"events": [metric(seq, step, **values)]}, max_events=5)
            )
            s.commit()

    async def main() -> tuple[list[str], list[str], int]:
        h = hub.JobHub(session_factory, 0.01, job_id)
        fast = hub.Viewer(cursor=JobCursor())
        slow = hub.Viewer(cursor=JobCursor())
        h.join(fast)
        h.join(slow)
        fast_frames: list[str] = []
        slow_frames: list[str] = []
        for step in range(1, 41):
            ingest(step, loss=float(step))
            if step == 20:
                ingest(step, eval_loss=0.5)  # a second key at the same step, in a later tick
            await anyio.sleep(0.03)
            while fast.queue:
                fast_frames.extend(fast.queue.popleft().frames)
        assert slow.dropped and slow not in h.viewers, "the slow viewer was dropped from the fan-out"
        while slow.queue:  # it writes what it holds, then rejoins where its last whole tick left it
            delivery = slow.queue.popleft()
            slow_frames.extend(delivery.frames)
            slow.cursor = delivery.cursor
        h.join(slow)
        await anyio.sleep(0.05)
        for step in range(41, 46):
            ingest(step, loss=float(step))
            await anyio.sleep(0.03)
            for v, out in ((fast, fast_frames), (slow, slow_frames)):
                while v.queue:
                    out.extend(v.queue.popleft().frames)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until both hold the last point (or too long)
            for v, out in ((fast, fast_frames), (slow, slow_frames)):
                while v.queue:
                    out.extend(v.queue.popleft().frames)
            if all(loss_points(out)[-1:] == [(45, 45.0)] for out in (fast_frames, slow_frames)):
                break
            await anyio.sleep(0.02)
        h.leave(fast)
        h.leave(slow)
        await anyio.sleep(0.05)
        return fast_frames, slow_frames, h.ticks

    fast_frames, slow_frames, _ = anyio.run(main)
    want = [(step, float(step)) for step in range(1, 46)]
    assert loss_points(fast_frames) == want
    assert loss_points(slow_frames) == want
    assert loss_points(fast_frames, "eval_loss") == loss_points(slow_frames, "eval_loss") == [(20, 0.5)]
    wait_until(lambda: hub.hubs_of(session_factory), 5, "the hub to stop", until=lambda hubs: not hubs)


def test_detail_pages_compare_pages_and_the_jobs_list_share_the_same_pollers(
    live_server, started_job
) -> None:  # type: ignore[no-untyped-def]
    a, b = started_job(), started_job(name="b")
    factory = live_server.app.state.session_factory
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        r = http.post(f"/api/jobs/{a}/events", json={"events": [metric(1, 1, loss=1.0)]}, headers=AUTH)
        assert r.status_code == 200
        streams = [
            http.stream("GET", f"/api/jobs/{a}/stream"),
            http.stream("GET", f"/api/jobs/{a}/stream"),
            http.stream("GET", "/api/compare/stream", params={"ids": f"{a},{b}"}),
            http.stream("GET", "/api/stream"),
            http.stream("GET", "/api/stream"),
        ]
        opened = [s.__enter__() for s in streams]
        try:
            lines = [response.iter_lines() for response in opened]  # kept: a dropped one closes its stream
            for each in lines:  # each got its first message: it has joined its hubs
                next(line for line in each if line.startswith("data: "))

            def viewers() -> dict[Any, int]:
                return {key: len(h.viewers) for key, h in hub.hubs_of(factory).items()}

            # one hub per job and one for the list, however many pages follow them
            wait_until(viewers, 10, "every viewer to join", until=lambda v: v == {a: 3, b: 1, "jobs": 2})
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    wait_until(lambda: hub.hubs_of(factory), 10, "the hubs to stop", until=lambda hubs: not hubs)
