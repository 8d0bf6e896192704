"""Server-sent events for the job detail page and the jobs list: cursors, polls and message format.

The streams are served by app/metrics/hub.py: one poller per job (and one for the jobs list) reads
what changed every `sse_batch_interval_s` in a short session (never held across a sleep) and fans the
messages out to every viewer, batched into at most three messages per poll. Every message carries
`id: <last_event_seq>.<last_metric_step>`; a browser that reconnects sends it back as Last-Event-ID
and the stream resumes there without repeating anything. A stream opened without a cursor starts with
the whole history, downsampled like GET /metrics (or pass `?cursor=` from that response). Clients treat
a metric point whose step is not after the last one they hold as a replacement from that step on: a
guard rollback restarts the run at an earlier step. An `end` message follows a finished job's final
state, then the stream closes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.schemas import as_utc, job_summary
from app.jobs.status import TERMINAL, JobStatus
from app.metrics.queries import events as query_events
from app.metrics.queries import raw_points, series
from app.models import Job
from app.settings import Settings

INITIAL_MAX_POINTS = 2000  # per key, for a stream opened without a cursor
MAX_EVENTS_PER_MESSAGE = 500


def format_sse(event: str | None, data: Any, event_id: str | None = None) -> str:
    """One SSE message (JSON data on a single line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return "\n".join(lines) + "\n\n"


def parse_last_event_id(value: str | None) -> tuple[int, int | None]:
    """'<seq>.<step>' → (seq, step); anything unreadable → start from the beginning."""
    if not value:
        return 0, None
    seq_text, _, step_text = value.strip().partition(".")
    try:
        seq = max(0, int(seq_text))
    except ValueError:
        return 0, None
    try:
        step = int(step_text) if step_text not in ("", "-") else None
    except ValueError:
        step = None
    return seq, step


@dataclass
class JobCursor:
    """How far one detail-page stream has got."""

    event_seq: int = 0
    metric_step: int | None = None  # highest step sent; None: nothing sent yet
    # keys already sent at metric_step; None: every key at metric_step counts as sent (after a resume or
    # the first, downsampled load). Tracking keys lets an eval_loss that arrives after the loss of the same
    # step still go out.
    boundary_keys: set[str] | None = None
    history_sent: bool = False  # the first (downsampled) load happened, or the client resumed from a cursor
    job_seen_last_seq: int = -1
    last_summary: dict[str, Any] | None = None

    def event_id(self) -> str:
        """The SSE id for the current position."""
        step = "" if self.metric_step is None else str(self.metric_step)
        return f"{self.event_seq}.{step}"


@dataclass
class PollResult:
    """What one poll found for a job stream."""

    exists: bool
    summary: dict[str, Any] | None = None
    series: dict[str, list[list[Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    terminal: bool = False
    caught_up: bool = False  # every stored event and point has been read


def _new_points(session: Session, job_id: int, cursor: JobCursor) -> dict[str, list[list[Any]]]:
    """Metric points the stream has not sent yet; advances the cursor."""
    if cursor.metric_step is None and not cursor.history_sent:
        # first load: the whole history, downsampled like GET /metrics, so a long run does not flood the page
        cursor.history_sent = True
        fresh = series(session, job_id=job_id, keys=None, max_points=INITIAL_MAX_POINTS)
        steps = [int(pts[-1][0] or 0) for pts in fresh.values() if pts]
        if steps:
            cursor.metric_step = max(steps)
            # downsampling keeps each series' last point, so every key at the top step went out
            cursor.boundary_keys = {k for k, pts in fresh.items() if pts and pts[-1][0] == cursor.metric_step}
        return fresh
    if cursor.metric_step is None:
        points = raw_points(session, job_id=job_id)
    elif cursor.boundary_keys is None:
        points = raw_points(session, job_id=job_id, after_step=cursor.metric_step)
    else:
        points = raw_points(session, job_id=job_id, from_step=cursor.metric_step)
    fresh = {}
    high = cursor.metric_step
    for key, pts in points.items():
        for step, value in pts:
            if (
                step == cursor.metric_step
                and cursor.boundary_keys is not None
                and key in cursor.boundary_keys
            ):
                continue
            fresh.setdefault(key, []).append([step, value])
            high = step if high is None else max(high, step)
    if fresh and high is not None:
        at_high = {key for key, pts in fresh.items() if pts[-1][0] == high}
        if high == cursor.metric_step and cursor.boundary_keys is not None:
            at_high |= cursor.boundary_keys
        cursor.metric_step = high
        cursor.boundary_keys = at_high
    return fresh


def poll_job(factory: sessionmaker[Session], job_id: int, cursor: JobCursor) -> PollResult:
    """One short session: what changed for `job_id` since `cursor` (cursor is advanced)."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return PollResult(exists=False)
        return poll_in_session(session, job, cursor)


# summary fields that change with the clock alone: they go out with the next real change, not every poll
_CLOCK_FIELDS = ("duration_seconds",)


def _settled(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {k: v for k, v in summary.items() if k not in _CLOCK_FIELDS}


def poll_in_session(session: Session, job: Job, cursor: JobCursor) -> PollResult:
    """What changed for `job` since `cursor`, read in `session` (cursor is advanced)."""
    job_id = job.id
    result = PollResult(exists=True, terminal=JobStatus(job.status) in TERMINAL)
    summary = job_summary(job)
    if _settled(summary) != _settled(cursor.last_summary):
        result.summary = summary
        cursor.last_summary = summary
    if job.last_seq == cursor.job_seen_last_seq:
        result.caught_up = True
        return result  # no new worker events: no new points or events either
    if cursor.metric_step is not None and job.last_step < cursor.metric_step:
        # a guard rollback: the run continues from an earlier step, whose points are new values
        cursor.metric_step = job.last_step
        cursor.boundary_keys = set()
    result.series = _new_points(session, job_id, cursor)
    evs = query_events(session, job_id=job_id, after_seq=cursor.event_seq, limit=MAX_EVENTS_PER_MESSAGE)
    if evs:
        cursor.event_seq = evs[-1]["seq"]
        result.events = evs
    if len(evs) < MAX_EVENTS_PER_MESSAGE:
        cursor.job_seen_last_seq = job.last_seq  # else: more to fetch on the next poll
        result.caught_up = True
    return result


@dataclass
class StreamPacer:
    """The lifetime cap and keep-alive pings every SSE stream of the app shares."""

    max_lifetime_s: float
    ping_interval_s: float
    started: float = field(default_factory=time.monotonic)
    last_message: float = field(default_factory=time.monotonic)

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamPacer:
        """Pacing from settings.sse_max_lifetime_s and settings.sse_ping_interval_s."""
        return cls(max_lifetime_s=settings.sse_max_lifetime_s, ping_interval_s=settings.sse_ping_interval_s)

    def expired(self) -> bool:
        """The stream has lived long enough; the browser reconnects with Last-Event-ID."""
        return time.monotonic() - self.started > self.max_lifetime_s

    def ping(self, sent: bool) -> str | None:
        """A keep-alive comment to send when nothing else went out for ping_interval_s, else None."""
        now = time.monotonic()
        if sent:
            self.last_message = now
            return None
        if now - self.last_message >= self.ping_interval_s:
            self.last_message = now
            return ": ping\n\n"
        return None


async def client_disconnected(request: Request) -> bool:
    """True once the client has gone (a broken transport counts), or its login or token was revoked."""
    from app.auth.middleware import principal_still_valid

    if not principal_still_valid(request):
        return True
    try:
        return await request.is_disconnected()
    except Exception:  # noqa: BLE001 - a broken transport means the client is gone
        return True


@dataclass
class ListCursor:
    """What one jobs-list stream has sent: updated_at per job id."""

    seen: dict[int, datetime | None] = field(default_factory=dict)
    watermark: datetime | None = None


def poll_jobs(factory: sessionmaker[Session], cursor: ListCursor, limit: int = 200) -> list[dict[str, Any]]:
    """Summaries of jobs whose updated_at changed since the last poll (all recent jobs the first time)."""
    with factory() as session:
        return poll_jobs_in_session(session, cursor, limit)


def poll_jobs_in_session(session: Session, cursor: ListCursor, limit: int = 200) -> list[dict[str, Any]]:
    """poll_jobs in a session the caller holds."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if cursor.watermark is not None:
        # a little slack: commits do not land in updated_at order
        stmt = (
            select(Job)
            .where(Job.updated_at >= cursor.watermark - timedelta(seconds=5))
            .order_by(Job.id.desc())
        )
    changed: list[dict[str, Any]] = []
    for job in session.scalars(stmt):
        updated = as_utc(job.updated_at)
        if job.id not in cursor.seen or cursor.seen[job.id] != updated:
            cursor.seen[job.id] = updated
            changed.append(job_summary(job))
        if updated is not None and (cursor.watermark is None or updated > cursor.watermark):
            cursor.watermark = updated
    return changed
