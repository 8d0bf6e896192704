"""One poller per job, fanned out: every live viewer of a job shares one database read per tick.

Before, each SSE viewer polled the database on its own every tick, so a hundred viewers of one run cost a
hundred sessions a tick for the same few points. A `Hub` (one per job, one for the jobs list) now reads
what changed once per tick, formats the SSE messages once, and hands the same strings to every viewer.

A viewer that joins (a new page, a reconnect with Last-Event-ID, or one that fell behind) is caught up in
the hub's next tick, in the same database snapshot as the hub's own read (one transaction: SQLite's WAL
snapshot, REPEATABLE READ on PostgreSQL), so after its catch-up it has seen exactly what the hub has seen
and continues with the shared messages: nothing is lost or sent twice. A viewer whose client reads too
slowly (more than MAX_BACKLOG ticks queued) is dropped from the fan-out without slowing anyone else; once
it has written what it holds it rejoins from the exact cursor of the last tick it delivered. The hub
stops when its last viewer leaves or after its job's `end`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.schemas import job_summary
from app.metrics.stream import (
    JobCursor,
    ListCursor,
    StreamPacer,
    client_disconnected,
    format_sse,
    parse_last_event_id,
    poll_in_session,
    poll_jobs_in_session,
)
from app.models import Job, JobEvent, MetricSeries
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKLOG = 64  # ticks queued for one viewer before it is dropped from the fan-out and rejoins
MAX_POLLS_PER_TICK = 20  # a cursor far behind (500 events a poll) catches up over several ticks


@dataclass
class Delivery:
    """The messages of one tick for one viewer, and the cursor they bring it to."""

    frames: list[str]
    cursor: Any  # a JobCursor copy (job hubs) or None (the jobs list)
    end: bool = False
    # the same content as data, for streams that shape their own messages (the compare page)
    summary: dict[str, Any] | None = None
    series: dict[str, list[list[Any]]] = field(default_factory=dict)
    changed: bool = False  # a summary, points or events came in this tick

    @functools.cached_property
    def text(self) -> str:
        """All the messages as one write: one send per viewer per tick instead of one per message."""
        return "".join(self.frames)


@dataclass(eq=False)
class Viewer:
    """One SSE client of a hub."""

    cursor: Any  # where its catch-up starts (a JobCursor for job hubs)
    queue: deque[Delivery] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False  # no longer fed by the hub: rejoin once the queue is written
    left: bool = False

    def push(self, delivery: Delivery) -> None:
        self.queue.append(delivery)
        self.wake.set()


def snapshot(session: Session) -> None:
    """Make every read of this session's transaction see one snapshot (PostgreSQL; SQLite's WAL does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


class Hub:
    """The shared poller of one source (a job's stream, or the jobs list)."""

    def __init__(self, factory: sessionmaker[Session], interval_s: float, key: Any) -> None:
        self.factory = factory
        self.interval_s = interval_s
        self.key = key
        self.viewers: set[Viewer] = set()
        self.joiners: list[Viewer] = []
        self.closed = False
        self.ticks = 0  # database reads so far (for tests and the benchmark)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def join(self, viewer: Viewer) -> None:
        """Catch `viewer` up in the next tick, then feed it the shared messages."""
        viewer.dropped = False
        viewer.left = False
        self.joiners.append(viewer)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sse-hub:{self.key}")

    def leave(self, viewer: Viewer) -> None:
        """`viewer` has gone: stop feeding it (the hub stops with its last viewer)."""
        viewer.left = True
        self.viewers.discard(viewer)
        if viewer in self.joiners:
            self.joiners.remove(viewer)
        self._wake.set()

    async def _run(self) -> None:
        try:
            while self.viewers or self.joiners:
                joiners, self.joiners = self.joiners, []
                try:
                    shared, caught_up = await anyio.to_thread.run_sync(self.tick, joiners)
                except Exception:  # a database hiccup: keep the viewers, try again next tick
                    log.warning("live stream %s: reading what changed failed", self.key, exc_info=True)
                    self.joiners[:0] = joiners
                    shared, caught_up = None, {}
                self.ticks += 1
                self._fan_out(shared, caught_up)
                if shared is not None and shared.end:
                    return
                deadline = time.monotonic() + self.interval_s
                # tick on a fixed beat (a joiner waits for the next one); stop at once when all have left
                while self.viewers or self.joiners:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    with anyio.move_on_after(remaining):
                        await self._wake.wait()
        finally:
            self.closed = True
            for viewer in (*self.viewers, *self.joiners):
                viewer.dropped = True
                viewer.wake.set()
            self.viewers.clear()
            self.joiners.clear()
            _forget(self)

    def _fan_out(self, shared: Delivery | None, caught_up: dict[Viewer, Delivery | None]) -> None:
        """Hand this tick's messages to every viewer (on the event loop: no await, so no viewer moves)."""
        for viewer in list(self.viewers):
            if shared is not None and shared.frames:
                viewer.push(shared)  # the same strings for every viewer: formatted once
            if shared is not None and shared.end:
                self.viewers.discard(viewer)
            elif len(viewer.queue) > MAX_BACKLOG:
                # a slow client: out of the fan-out; it rejoins from its last delivered tick
                self.viewers.discard(viewer)
                viewer.dropped = True
                viewer.wake.set()
        for viewer, delivery in caught_up.items():
            if delivery is None or viewer.left:
                continue
            viewer.push(delivery)
            if not delivery.end and not (shared is not None and shared.end):
                self.viewers.add(viewer)
            elif not delivery.end:
                viewer.dropped = True  # the hub ends; it rejoins a new one, which catches it up
        if shared is not None and shared.end:
            self.closed = True

    def tick(self, joiners: list[Viewer]) -> tuple[Delivery | None, dict[Viewer, Delivery | None]]:
        """One database read (in a thread): the shared delta, and each joiner's catch-up, one snapshot."""
        raise NotImplementedError


class JobHub(Hub):
    """The shared stream of one job's detail page (and of each compare page showing it)."""

    def __init__(self, factory: sessionmaker[Session], interval_s: float, job_id: int) -> None:
        super().__init__(factory, interval_s, job_id)
        self.job_id = job_id
        self.cursor: JobCursor | None = None  # None until the first tick reads where the job is

    def tick(self, joiners: list[Viewer]) -> tuple[Delivery | None, dict[Viewer, Delivery | None]]:
        with self.factory() as session:
            snapshot(session)
            job = session.get(Job, self.job_id)
            if job is None:
                gone = Delivery(
                    [format_sse("error", {"detail": f"job {self.job_id} does not exist"})], None, True
                )
                return gone, dict.fromkeys(joiners, gone)
            # cursors advance on copies, kept only once the whole tick has been read: a read that fails
            # halfway is retried from where it started, never skipping what it had half-read
            shared: Delivery | None = None
            if self.cursor is None:
                cursor = current_cursor(session, job)
            else:
                cursor = copy.deepcopy(self.cursor)
                shared = job_delivery(session, job, cursor)
            caught_up: dict[Viewer, Delivery | None] = {}
            for viewer in joiners:
                caught_up[viewer] = job_delivery(session, job, copy.deepcopy(viewer.cursor))
            self.cursor = cursor
            return shared, caught_up


def current_cursor(session: Session, job: Job) -> JobCursor:
    """A cursor that has seen everything stored for `job` now (read from summaries, not the points)."""
    seq = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job.id))
    step = session.scalar(select(func.max(MetricSeries.last_step)).where(MetricSeries.job_id == job.id))
    return JobCursor(
        event_seq=seq or 0,
        metric_step=step,
        boundary_keys=None,
        history_sent=True,
        job_seen_last_seq=job.last_seq,
        last_summary=job_summary(job),
    )


def job_delivery(session: Session, job: Job, cursor: JobCursor) -> Delivery:
    """Everything new for `cursor` in this session's snapshot, as SSE messages (cursor is advanced).

    Each message's id covers only what it and the messages before it carried, so a connection that drops
    between two messages resumes without losing the second.
    """
    frames: list[str] = []
    end = False
    summary: dict[str, Any] | None = None
    series: dict[str, list[list[Any]]] = {}
    changed = False
    for _ in range(MAX_POLLS_PER_TICK):
        before = cursor.event_id()
        seq_before = cursor.event_seq
        result = poll_in_session(session, job, cursor)
        if result.summary is not None:
            frames.append(format_sse("job", result.summary, before))
        if result.series:
            step_text = "" if cursor.metric_step is None else str(cursor.metric_step)
            frames.append(format_sse("metrics", {"series": result.series}, f"{seq_before}.{step_text}"))
        if result.events:
            frames.append(format_sse("events", result.events, cursor.event_id()))
        summary = result.summary or summary
        for key, points in result.series.items():
            series.setdefault(key, []).extend(points)
        changed = changed or bool(result.summary or result.series or result.events)
        if result.caught_up:
            if result.terminal:
                # the final state is out and nothing is left to flush: say so (clients stop on `end`)
                status = (cursor.last_summary or {}).get("status")
                frames.append(format_sse("end", {"status": status}, cursor.event_id()))
                end = True
            break
    return Delivery(frames, copy.deepcopy(cursor), end, summary, series, changed)


class ListHub(Hub):
    """The shared stream of the jobs list."""

    def __init__(self, factory: sessionmaker[Session], interval_s: float) -> None:
        super().__init__(factory, interval_s, "jobs")
        self.cursor: ListCursor | None = None

    def tick(self, joiners: list[Viewer]) -> tuple[Delivery | None, dict[Viewer, Delivery | None]]:
        with self.factory() as session:
            snapshot(session)
            shared: Delivery | None = None
            cursor = ListCursor() if self.cursor is None else copy.deepcopy(self.cursor)
            changed = poll_jobs_in_session(session, cursor)
            if self.cursor is not None:
                shared = Delivery([format_sse("jobs", changed)] if changed else [], None)
            caught_up: dict[Viewer, Delivery | None] = {}
            if joiners:
                # a joiner gets every recent job (as a new page does); then the shared changes
                first = Delivery([format_sse("jobs", poll_jobs_in_session(session, ListCursor()))], None)
                caught_up = dict.fromkeys(joiners, first)
            self.cursor = cursor
            return shared, caught_up


_HUBS: weakref.WeakKeyDictionary[sessionmaker[Session], dict[Any, Hub]] = weakref.WeakKeyDictionary()


def _forget(hub: Hub) -> None:
    hubs = _HUBS.get(hub.factory, {})
    if hubs.get(hub.key) is hub:
        del hubs[hub.key]


def _hub(factory: sessionmaker[Session], key: Any, make: Callable[[], Hub]) -> Hub:
    hubs = _HUBS.setdefault(factory, {})
    hub = hubs.get(key)
    if hub is None or hub.closed:
        hub = hubs[key] = make()
    return hub


def job_hub(factory: sessionmaker[Session], job_id: int, interval_s: float) -> Hub:
    """The live hub of `job_id` (made, and started by its first viewer, when there is none)."""
    return _hub(factory, job_id, lambda: JobHub(factory, interval_s, job_id))


def list_hub(factory: sessionmaker[Session], interval_s: float) -> Hub:
    """The live hub of the jobs list."""
    return _hub(factory, "jobs", lambda: ListHub(factory, interval_s))


def hubs_of(factory: sessionmaker[Session]) -> dict[Any, Hub]:
    """The hubs running now for this database (tests, the benchmark)."""
    return dict(_HUBS.get(factory, {}))


IDLE_CHECK_S = 1.0  # at most this long between a quiet viewer's disconnect / revocation checks


def idle_check_s(settings: Settings) -> float:
    """How long a viewer with nothing to send sleeps before checking its client again."""
    return max(settings.sse_batch_interval_s, min(IDLE_CHECK_S, settings.sse_ping_interval_s))


async def _viewer_stream(
    request: Request, settings: Settings, viewer: Viewer, find_hub: Callable[[], Hub]
) -> AsyncIterator[str]:
    """One client's messages from a hub: its catch-up, then the shared ones; pings, the lifetime cap."""
    pacer = StreamPacer.from_settings(settings)
    hub = find_hub()
    hub.join(viewer)
    yield "retry: 2000\n\n"
    try:
        while True:
            if await client_disconnected(request):
                return
            sent = False
            while viewer.queue:
                delivery = viewer.queue.popleft()
                if delivery.frames:
                    yield delivery.text  # the same string object for every viewer of the tick
                    sent = True
                if delivery.cursor is not None:
                    viewer.cursor = delivery.cursor  # where a rejoin resumes: after this whole tick
                if delivery.end:
                    return
            if viewer.dropped and not viewer.queue:
                hub.leave(viewer)
                hub = find_hub()
                hub.join(viewer)
            if pacer.expired():
                return  # the browser reconnects with Last-Event-ID
            if ping := pacer.ping(sent):
                yield ping
            viewer.wake.clear()
            if not viewer.queue and not viewer.dropped:
                # woken by the hub when it has something; the timeout keeps the disconnect, revocation
                # and ping checks going without waking every viewer on every idle tick
                with anyio.move_on_after(idle_check_s(settings)):
                    await viewer.wake.wait()
    finally:
        hub.leave(viewer)


def job_event_stream(
    request: Request,
    *,
    factory: sessionmaker[Session],
    settings: Settings,
    job_id: int,
    last_event_id: str | None,
) -> AsyncIterator[str]:
    """The detail-page stream (app.metrics.stream describes its messages), served from the job's hub."""
    seq, step = parse_last_event_id(last_event_id)
    cursor = JobCursor(event_seq=seq, metric_step=step, history_sent=last_event_id is not None)
    return _viewer_stream(
        request,
        settings,
        Viewer(cursor=cursor),
        lambda: job_hub(factory, job_id, settings.sse_batch_interval_s),
    )


def jobs_list_stream(
    request: Request, *, factory: sessionmaker[Session], settings: Settings
) -> AsyncIterator[str]:
    """The jobs-list stream: every recent job first, then the summaries of jobs that changed."""
    return _viewer_stream(
        request,
        settings,
        Viewer(cursor=None),
        lambda: list_hub(factory, settings.sse_batch_interval_s),
    )
