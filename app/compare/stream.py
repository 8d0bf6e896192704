"""One server-sent-events stream for a whole compare page (2–8 runs, or a sweep group).

Browsers allow about six connections per origin, so a compare page must not open one detail stream
per run. This stream polls every run with app.metrics.stream.poll_job — the same cursor logic as the
detail page, each poll in a short session of its own, none held across a sleep — and multiplexes the
results: one `run` message per run that changed, {"job_id", "row"?, "series"?}. The first message of
each run carries its downsampled history; later ones only new points. The SSE id is
"<job_id>:<seq>.<step>,..." for every run, covering only what was sent, so a reconnect with
Last-Event-ID resumes each run where it stopped. `end` follows once every run has finished and its
last points went out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.compare.service import compare_row, run_stats
from app.jobs.schemas import iso
from app.jobs.status import TERMINAL, JobStatus
from app.metrics.stream import (
    JobCursor,
    PollResult,
    StreamPacer,
    client_disconnected,
    format_sse,
    parse_last_event_id,
    poll_job,
)
from app.models import Job
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


@dataclass
class RunUpdate:
    """What one poll found for one run of the compare page."""

    job_id: int
    poll: PollResult
    row: dict[str, Any] | None = None


def _unchanged(
    factory: sessionmaker[Session], job_ids: Sequence[int], cursors: dict[int, JobCursor]
) -> dict[int, PollResult]:
    """Runs with nothing new since their cursor (same updated_at and last_seq), found in one query.

    A sweep group can hold 32 runs: polling each in a session of its own four times a second would
    be 128 sessions a second for a page that is mostly idle.
    """
    with factory() as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.last_seq, Job.updated_at).where(Job.id.in_(list(job_ids)))
        ).all()
    quiet: dict[int, PollResult] = {}
    for job_id, status, last_seq, updated_at in rows:
        cursor = cursors[job_id]
        seen = cursor.last_summary
        if (
            seen is not None
            and seen.get("updated_at") == iso(updated_at)
            and last_seq == cursor.job_seen_last_seq
        ):
            quiet[job_id] = PollResult(exists=True, terminal=JobStatus(status) in TERMINAL, caught_up=True)
    return quiet


def poll_runs(
    factory: sessionmaker[Session], job_ids: Sequence[int], cursors: dict[int, JobCursor]
) -> list[RunUpdate]:
    """Poll every run that changed (advancing its cursor) and build fresh summary rows for them."""
    quiet = _unchanged(factory, job_ids, cursors)
    updates = [
        RunUpdate(job_id, quiet[job_id] if job_id in quiet else poll_job(factory, job_id, cursors[job_id]))
        for job_id in job_ids
    ]
    changed = [u for u in updates if u.poll.exists and (u.poll.summary or u.poll.series or u.poll.events)]
    if changed:
        with factory() as session:
            stats = run_stats(session, [u.job_id for u in changed])
        for u in changed:
            summary = u.poll.summary or cursors[u.job_id].last_summary or {}
            u.row = compare_row(summary, stats[u.job_id])
    return updates


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
    cursors: dict[int, JobCursor] = {}
    for job_id in job_ids:
        if job_id in resumed:
            seq, step = parse_last_event_id(resumed[job_id])
            cursors[job_id] = JobCursor(event_seq=seq, metric_step=step, history_sent=True)
        else:
            cursors[job_id] = JobCursor()
    sent = {job_id: cursors[job_id].event_id() for job_id in job_ids}
    pacer = StreamPacer.from_settings(settings)
    yield "retry: 2000\n\n"
    while True:
        if await client_disconnected(request):
            return
        updates = await anyio.to_thread.run_sync(poll_runs, factory, list(job_ids), cursors)
        sent_any = False
        for u in updates:
            if not u.poll.exists:
                continue  # deleted meanwhile: the page keeps what it has
            data: dict[str, Any] = {"job_id": u.job_id}
            if u.row is not None:
                data["row"] = u.row
            if u.poll.series:
                data["series"] = u.poll.series
            sent[u.job_id] = cursors[u.job_id].event_id()
            if len(data) > 1:
                yield format_sse("run", data, compare_event_id(sent))
                sent_any = True
        if all((not u.poll.exists) or (u.poll.terminal and u.poll.caught_up) for u in updates):
            yield format_sse("end", {"job_ids": list(job_ids)}, compare_event_id(sent))
            return
        if pacer.expired():
            return  # the browser reconnects with Last-Event-ID
        if ping := pacer.ping(sent_any):
            yield ping
        await anyio.sleep(settings.sse_batch_interval_s)
