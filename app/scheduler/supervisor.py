"""The supervisor: each tick it starts what fits, then watches every process it owns.

Watching means: notice exits and classify them; turn a `cancelling` status into SIGTERM (then SIGKILL
after settings.cancel_grace_s); enforce resources.max_runtime_minutes; stop a process whose heartbeat
went quiet for settings.heartbeat_timeout_s. Every job is handled inside its own try/except, so one bad
job is logged with its id and never stops the others. All methods are synchronous; runner.py calls
tick() from a worker thread so database waits never block the web server's event loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import immediate_transaction
from app.jobs.service import transition
from app.jobs.status import TERMINAL, JobStatus
from app.metrics.ingest import ingest_spool
from app.models import Job
from app.scheduler.claim import ClaimedJob, claim_next_job, prepare_run_dir
from app.scheduler.classify import ProcessStop, StopCause, Verdict, classify_exit, read_outcome
from app.scheduler.gpus import Slots
from app.scheduler.launcher import ExitInfo, Launcher, LaunchSpec, WorkerHandle
from app.scheduler.tasks import TaskSupervisor, task_launcher
from app.settings import Settings
from contract.config import ConfigError, stored_config
from contract.rundir import RunDir

log = logging.getLogger(__name__)

# a safety bound on claims per tick; placement stops far earlier (when the slots are full)
MAX_CLAIMS_PER_TICK = 256


@dataclass
class Tracked:
    """One process this supervisor owns."""

    handle: WorkerHandle
    gpus: tuple[str, ...]
    stop: ProcessStop | None = None


@dataclass(frozen=True)
class _JobView:
    status: str
    heartbeat_at: datetime | None
    starting_at: datetime | None
    config: dict[str, Any]


def _timestamp(value: datetime | None) -> float | None:
    """Seconds since the epoch; SQLite hands datetimes back without a zone, and we store UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def store_unsent_events(session: Session, job: Job, run_dir: Path | str | None) -> int:
    """Ingest RUN_DIR/events.jsonl past job.last_seq (the ended worker's undelivered events); never raises."""
    if not run_dir:
        return 0
    try:
        stored = ingest_spool(session, job=job, spool=RunDir(Path(run_dir)).events)
    except Exception:  # a damaged spool must not keep the job from its final status
        log.exception("job %s: could not read the spool of its ended worker", job.id)
        return 0
    if stored:
        log.info("job %s: stored %d event(s) the worker spooled but never delivered", job.id, stored)
    return stored


def announce_app_url(run_dir: Path | str, app_url: str) -> None:
    """Write this app's address to RUN_DIR/app_url (0644, atomically): a worker whose posts fail reads it,
    so it follows an app that took its job over at another address.

    RUN_DIR is writable by the worker: the temporary file is created with O_EXCL under a random name, so a
    link planted there cannot redirect the write, and the rename replaces a planted link, never its target.
    """
    run = RunDir(Path(run_dir))
    fd, tmp = tempfile.mkstemp(prefix=".app_url.", dir=run.root)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(app_url.rstrip("/") + "\n")
        os.replace(tmp, run.app_url)
    except BaseException:
        if fd != -1:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def max_runtime_s(config: dict[str, Any]) -> float | None:
    """resources.max_runtime_minutes of a stored config, in seconds (None: no deadline)."""
    try:
        minutes = stored_config(config).resources.max_runtime_minutes
    except ConfigError:
        return None  # an unreadable row gets no deadline; the heartbeat still judges the process
    return float(minutes) * 60.0 if minutes else None


class Supervisor:
    """Claims, launches and watches training processes for one launcher and one machine's slots."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: sessionmaker[Session],
        launcher: Launcher,
        slots: Slots,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.launcher = launcher
        self.slots = slots
        self.clock = clock
        self._tracked: dict[int, Tracked] = {}
        # merged exports and try-the-adapter runs: placed on the same slots, ticked with the jobs
        self.tasks = TaskSupervisor(
            settings=settings,
            session_factory=session_factory,
            launcher=task_launcher(settings, launcher),
            clock=clock,
        )
        self._lock = threading.Lock()  # snapshot() reads from the event loop while tick() runs in a thread
        self.last_tick_at: float | None = None
        self.last_error: str | None = None
        # when this supervisor last came back from being away itself (SIGSTOP, a suspended machine, an
        # event loop blocked by one huge request): workers could not reach it meanwhile, so their silence
        # is measured from here, never from before the gap
        self.resumed_at: float | None = None
        self._last_tick_began: float | None = None

    # --- the loop body -------------------------------------------------------------------------

    def tick(self) -> None:
        """One round: watch what runs (freeing slots of what ended), then start what fits."""
        # one `now` for the whole round, taken before any judging: if the app is stopped mid-round, the
        # judgement uses the time before the stop (lenient), and the next round sees the gap
        now = self.clock()
        self._notice_own_absence(now)
        error: str | None = None
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            # tasks first: they are short and someone waits for them, so a freed GPU goes to them first
            ("tasks", self.tasks.tick),
            ("watch_running", lambda: self.watch_running(now)),
            ("launch_ready", self.launch_ready),
        )
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # a database hiccup must not end supervision; try again next tick
                error = f"{name}: {exc}"
                log.exception("scheduler %s failed; retrying next tick", name)
        self.last_error = error  # health shows the current trouble, not one long gone
        self.last_tick_at = self.clock()

    def _notice_own_absence(self, now: float) -> None:
        """Record a return when the gap since the previous tick shows this app itself was away."""
        previous, self._last_tick_began = self._last_tick_began, now
        if previous is None:
            return
        gap = now - previous
        if gap > self.settings.app_pause_threshold_s:
            self.resumed_at = now
            log.warning(
                "scheduler: %.0f s passed since its previous tick (the app was stopped, suspended or "
                "its event loop blocked); worker heartbeats are measured from now",
                gap,
            )

    def launch_ready(self) -> list[int]:
        """Claim and launch queued jobs while they fit; return the ids launched."""
        launched: list[int] = []
        for _ in range(MAX_CLAIMS_PER_TICK):
            claimed = claim_next_job(
                self.session_factory, settings=self.settings, slots=self.slots, launcher=self.launcher.name
            )
            if claimed is None:
                break
            if self._start(claimed):
                launched.append(claimed.job_id)
        return launched

    def watch_running(self, now: float | None = None) -> None:
        """Poll every owned process once: exits, cancel requests, deadlines, heartbeats, grace periods."""
        with self._lock:
            tracked = list(self._tracked.values())
        if not tracked:
            return
        if now is None:
            now = self.clock()
        views = self._load_views([t.handle.job_id for t in tracked])
        for item in tracked:
            job_id = item.handle.job_id
            try:
                self._watch_one(item, views.get(job_id), now)
            except Exception:
                log.exception("job %s: supervising it failed; retrying next tick", job_id)

    # --- ownership ----------------------------------------------------------------------------

    def adopt(self, handle: WorkerHandle, gpus: tuple[str, ...]) -> None:
        """Watch a process found alive at start-up (reconciliation), and tell it where this app is."""
        self._announce(handle.job_id, handle.run_dir)
        with self._lock:
            self._tracked[handle.job_id] = Tracked(handle=handle, gpus=gpus)

    def _announce(self, job_id: int, run_dir: Path) -> None:
        # a worker launched by another app process (a leader that died) still posts to that one's address
        try:
            announce_app_url(run_dir, self.settings.app_url)
        except OSError as exc:
            log.warning("job %s: could not write %s/app_url (%s)", job_id, run_dir, exc)

    def owned_job_ids(self) -> list[int]:
        """Ids of the jobs whose processes this supervisor watches."""
        with self._lock:
            return sorted(self._tracked)

    def snapshot(self) -> dict[str, Any]:
        """Slots, what runs where, and the last tick, for /api/health."""
        with self._lock:
            tracked = list(self._tracked.values())
        busy_gpus = {g for t in tracked for g in t.gpus} | self.tasks.busy_gpus()
        busy_cpu = sum(1 for t in tracked if not t.gpus)
        last_tick = (
            datetime.fromtimestamp(self.last_tick_at, UTC).isoformat(timespec="seconds")
            if self.last_tick_at
            else None
        )
        return {
            "enabled": True,
            "launcher": self.launcher.name,
            "gpus": list(self.slots.gpus),
            "free_gpus": [g for g in self.slots.gpus if g not in busy_gpus],
            "cpu_slots": self.slots.cpu_slots,
            "free_cpu_slots": max(0, self.slots.cpu_slots - busy_cpu),
            "jobs": [
                {
                    "job_id": t.handle.job_id,
                    "pid": t.handle.pid,
                    "gpus": list(t.gpus),
                    "reattached": t.handle.attached,
                    "stopping": t.stop.cause.value if t.stop else None,
                }
                for t in sorted(tracked, key=lambda t: t.handle.job_id)
            ],
            "tasks": self.tasks.snapshot(),
            "last_tick_at": last_tick,
            "resumed_at": (
                datetime.fromtimestamp(self.resumed_at, UTC).isoformat(timespec="seconds")
                if self.resumed_at
                else None
            ),
            "last_error": self.last_error,
        }

    # --- starting -----------------------------------------------------------------------------

    def _start(self, claimed: ClaimedJob) -> bool:
        job_id = claimed.job_id
        try:
            prepare_run_dir(claimed, app_url=self.settings.app_url)
            # replaces an address a previous attempt's app left, which the new worker would otherwise follow
            self._announce(job_id, claimed.run_dir)
            handle = self.launcher.launch(
                LaunchSpec(job_id=job_id, run_dir=claimed.run_dir, gpus=claimed.gpus, attempt=claimed.attempt)
            )
        except Exception as exc:
            log.exception("job %s: could not be launched", job_id)
            self._fail_unlaunched(job_id, f"could not start the training process: {exc}")
            return False
        with self._lock:
            self._tracked[job_id] = Tracked(handle=handle, gpus=claimed.gpus)
        try:
            with immediate_transaction(self.session_factory) as session:
                job = session.get(Job, job_id)
                if job is not None:
                    job.pid = handle.pid
        except Exception:
            # the process runs and is watched; only a re-attach after a restart needs the pid,
            # and launcher.json in RUN_DIR has it too
            log.exception("job %s: could not record pid %s", job_id, handle.pid)
        return True

    def _fail_unlaunched(self, job_id: int, reason: str) -> None:
        try:
            with immediate_transaction(self.session_factory) as session:
                job = session.get(Job, job_id)
                if job is not None and JobStatus(job.status) not in TERMINAL:
                    transition(session, job=job, to=JobStatus.FAILED, reason=reason)
        except Exception:
            log.exception("job %s: could not record the launch failure", job_id)

    # --- watching -----------------------------------------------------------------------------

    def _load_views(self, job_ids: list[int]) -> dict[int, _JobView]:
        with self.session_factory() as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.heartbeat_at, Job.starting_at, Job.config).where(
                    Job.id.in_(job_ids)
                )
            ).all()
        return {
            row.id: _JobView(
                status=row.status,
                heartbeat_at=row.heartbeat_at,
                starting_at=row.starting_at,
                config=row.config or {},
            )
            for row in rows
        }

    def _watch_one(self, item: Tracked, view: _JobView | None, now: float) -> None:
        handle = item.handle
        exit_info = self.launcher.poll(handle)
        if exit_info is not None:
            self._finish(item, exit_info)
            with self._lock:
                self._tracked.pop(handle.job_id, None)
            return
        if item.stop is None:
            self._maybe_stop(item, view, now)
        elif not item.stop.killed and now - item.stop.terminated_at >= self.settings.cancel_grace_s:
            log.warning(
                "job %s: pid %s still runs %.0f s after SIGTERM; sending SIGKILL",
                handle.job_id,
                handle.pid,
                now - item.stop.terminated_at,
            )
            self.launcher.kill(handle)
            item.stop.killed = True

    def _maybe_stop(self, item: Tracked, view: _JobView | None, now: float) -> None:
        handle = item.handle
        if view is None or JobStatus(view.status) in TERMINAL:
            # the row is gone or already final: nothing will ever record this process's result
            self._request_stop(item, StopCause.CANCEL, "its job was deleted or already finished", now)
            return
        if view.status == JobStatus.CANCELLING:
            self._request_stop(item, StopCause.CANCEL, "cancel requested", now)
            return
        limit = max_runtime_s(view.config)
        if limit is not None:
            # a re-attached process started before we saw it; the attempt began at starting_at
            began = _timestamp(view.starting_at) if handle.attached else handle.started_at
            if began is not None and now - began > limit:
                detail = f"its deadline of {limit / 60:g} minutes (resources.max_runtime_minutes)"
                self._request_stop(item, StopCause.DEADLINE, detail, now)
                return
        # a process we just launched or re-attached gets a full timeout before its first heartbeat counts,
        # and so does every process after this app itself was away (its silence was ours)
        last_sign = max(_timestamp(view.heartbeat_at) or 0.0, handle.started_at, self.resumed_at or 0.0)
        quiet = now - last_sign
        if quiet > self.settings.heartbeat_timeout_s:
            if view.heartbeat_at is None:
                # never heard from at all: most often the worker cannot reach the app's URL
                detail = (
                    f"no heartbeat for {quiet:.0f} s: the worker never reached the app at "
                    f"{self.settings.app_url} (check TUNEBOARD_PUBLIC_URL)"
                )
            else:
                detail = f"no heartbeat for {quiet:.0f} s"
            log.warning(
                "job %s: %s while pid %s lives; stopping it as hung", handle.job_id, detail, handle.pid
            )
            self._request_stop(item, StopCause.HUNG, detail, now)

    def _request_stop(self, item: Tracked, cause: StopCause, detail: str, now: float) -> None:
        log.info("job %s: sending SIGTERM to pid %s (%s)", item.handle.job_id, item.handle.pid, detail)
        item.stop = ProcessStop(cause=cause, detail=detail, terminated_at=now)
        self.launcher.terminate(item.handle)

    def _finish(self, item: Tracked, exit_info: ExitInfo) -> Verdict | None:
        """Classify an ended process and write its final status, exit code and log tail."""
        handle = item.handle
        tail = self.launcher.stderr_tail(handle)
        outcome = read_outcome(handle.run_dir)
        with immediate_transaction(self.session_factory) as session:
            job = session.get(Job, handle.job_id)
            if job is None:
                log.info(
                    "job %s: process ended (%s) after its row was deleted",
                    handle.job_id,
                    exit_info.describe(),
                )
                return None
            current = JobStatus(job.status)
            if current in TERMINAL:
                log.info(
                    "job %s: process ended (%s); the job was already %s",
                    job.id,
                    exit_info.describe(),
                    current,
                )
                return None
            # what the worker spooled but could not POST (killed, or the app was away) still counts
            store_unsent_events(session, job, handle.run_dir)
            verdict = classify_exit(
                exit_info,
                outcome=outcome,
                stderr_tail=tail,
                stop=item.stop,
                cancel_requested=current == JobStatus.CANCELLING,
                on_gpu=bool(item.gpus),
                config=job.config or {},
            )
            transition(session, job=job, to=verdict.status, reason=verdict.reason)
            if verdict.reason is None:
                job.failure_reason = None
            job.exit_code = verdict.exit_code
            job.stderr_tail = tail
        log.info(
            "job %s: %s (%s)%s",
            handle.job_id,
            verdict.status.value,
            exit_info.describe(),
            f": {verdict.reason}" if verdict.reason else "",
        )
        return verdict
