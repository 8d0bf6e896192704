"""One server-sent-events stream for a whole compare page (2–8 runs, or a sweep group).

Browsers allow about six connections per origin, so a compare page must not open one detail stream
per run. This stream follows every run through its job hub (app/metrics/hub.py) — the same shared
poller, cursor logic and snapshot the detail pages of those runs use, so a compare page adds no database
polls of its own — and multiplexes the results: one `run` message per run that changed, {"job_id",
"row"?, "series"?}. The first message of each run carries its downsampled history; later ones only new
points. The SSE id is "<job_id>:<seq>.<step>,..." for every run, covering only what was sent, so a
reconnect with Last-Event-ID resumes each run where it stopped. `end` follows once every run has
finished and its last points went out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from app.compare.service import compare_row, run_stats
from app.metrics.hub import Delivery, Viewer, idle_check_s, job_hub
from app.metrics.stream import (
    JobCursor,
    StreamPacer,
    client_disconnected,
    format_sse,
    parse_last_event_id,
)
from app.settings import Settings


def parse_compare_event_id(value: str | None) -> dict[int, str]:
    """'3:12.40,4:9.38' → {3: '12.40', 4: '9.38'}; unreadable parts are ignored (those runs start over)."""
    cursors: dict[int, str] = {}
    for part in (value or "").split(","):
        job_text, sep, cursor = part.strip().partition(":")
        if sep and job_text.isdigit():
            cursors[int(job_text)] = cursor
    return cursors


def compare_event_id(sent: dict[int, str]) -> str:
    """The SSE id for what has been sent so far, per run."""
    return ",".join(f"{job_id}:{cursor}" for job_id, cursor in sent.items())


def _rows(factory: sessionmaker[Session], summaries: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The compare table rows of the runs that changed (their best loss from the series summaries)."""
    with factory() as session:
        stats = run_stats(session, list(summaries))
    return {job_id: compare_row(summary, stats[job_id]) for job_id, summary in summaries.items()}


async def compare_event_stream(
    request: Request,
    *,
    factory: sessionmaker[Session],
    settings: Settings,
    job_ids: Sequence[int],
    last_event_id: str | None,
) -> AsyncIterator[str]:
    """`run` messages for each run as it changes; `end` when all have finished."""
    resumed = parse_compare_event_id(last_event_id)
    wake = asyncio.Event()  # one for all runs: any hub's tick wakes this stream
    viewers: dict[int, Viewer] = {}
    for job_id in job_ids:
        if job_id in resumed:
            seq, step = parse_last_event_id(resumed[job_id])
            cursor = JobCursor(event_seq=seq, metric_step=step, history_sent=True)
        else:
            cursor = JobCursor()
        viewers[job_id] = Viewer(cursor=cursor, wake=wake)
    hubs = {job_id: job_hub(factory, job_id, settings.sse_batch_interval_s) for job_id in job_ids}
    for job_id, hub in hubs.items():
        hub.join(viewers[job_id])
    sent = {job_id: viewers[job_id].cursor.event_id() for job_id in job_ids}
    ended: set[int] = set()
    pacer = StreamPacer.from_settings(settings)
    yield "retry: 2000\n\n"
    try:
        while True:
            if await client_disconnected(request):
                return
            wake.clear()
            updates: list[tuple[int, Delivery]] = []
            for job_id, viewer in viewers.items():
                while viewer.queue:
                    delivery = viewer.queue.popleft()
                    updates.append((job_id, delivery))
                    if delivery.cursor is not None:
                        viewer.cursor = delivery.cursor
                    if delivery.end:
                        ended.add(job_id)
                if viewer.dropped and job_id not in ended:
                    hubs[job_id].leave(viewer)
                    hubs[job_id] = job_hub(factory, job_id, settings.sse_batch_interval_s)
                    hubs[job_id].join(viewer)
            changed = {job_id: d for job_id, d in updates if d.changed}
            rows: dict[int, dict[str, Any]] = {}
            if changed:
                summaries = {
                    job_id: d.summary or viewers[job_id].cursor.last_summary or {}
                    for job_id, d in changed.items()
                }
                rows = await anyio.to_thread.run_sync(_rows, factory, summaries)
            sent_any = False
            for job_id, delivery in updates:
                if delivery.cursor is None:
                    continue  # the run was deleted meanwhile: the page keeps what it has
                sent[job_id] = delivery.cursor.event_id()
                data: dict[str, Any] = {"job_id": job_id}
                if delivery.changed and job_id in rows:
                    data["row"] = rows.pop(job_id)  # the newest row, once per run and wake-up
                if delivery.series:
                    data["series"] = delivery.series
                if len(data) > 1:
                    yield format_sse("run", data, compare_event_id(sent))
                    sent_any = True
            if len(ended) == len(viewers):
                yield format_sse("end", {"job_ids": list(job_ids)}, compare_event_id(sent))
                return
            if pacer.expired():
                return  # the browser reconnects with Last-Event-ID
            if ping := pacer.ping(sent_any):
                yield ping
            if not any(v.queue for v in viewers.values()):
                with anyio.move_on_after(idle_check_s(settings)):
                    await wake.wait()
    finally:
        for job_id, hub in hubs.items():
            hub.leave(viewers[job_id])
