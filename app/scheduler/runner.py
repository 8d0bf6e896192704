"""The Scheduler the app's lifespan starts: reconcile once, then tick the supervisor every interval.

Only one scheduler may own a data directory's jobs, or two processes (uvicorn --workers 2, two
`tuneboard serve` on one data dir) would both re-attach and signal the same children. A scheduler
therefore takes an exclusive lock on DATA_DIR/scheduler.lock; one that cannot waits on standby and
takes over (reconciling first) when the lock holder goes away.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.scheduler.gpus import discover_slots
from app.scheduler.launcher import Launcher
from app.scheduler.local import LocalLauncher
from app.scheduler.reconcile import reconcile
from app.scheduler.supervisor import Supervisor
from app.scheduler.webhook import FinishWebhook
from app.settings import Settings

log = logging.getLogger(__name__)


def make_launcher(settings: Settings) -> Launcher:
    """The launcher named by settings.launcher."""
    if settings.launcher == "local":
        return LocalLauncher(
            python=settings.worker_python,
            worker_module=settings.worker_module,
            # the worker resolves dataset.source upload:<id> under this directory (worker/train/data.py)
            extra_env={"TUNEBOARD_DATASETS_DIR": str(settings.datasets_dir)},
        )
    if settings.launcher == "ray":
        from app.scheduler.ray_launcher import RayLauncher  # ray itself is imported on first use

        return RayLauncher(settings)
    raise ValueError(
        f"unknown launcher {settings.launcher!r}; set TUNEBOARD_LAUNCHER=local (this machine) "
        "or TUNEBOARD_LAUNCHER=ray (a Ray cluster, see docs/cluster.md)"
    )


class LeaderLock:
    """An exclusive, non-blocking flock on a file; the kernel drops it when the holder dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when held afterwards."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Scheduler:
    """Owns the supervisor loop. stop() leaves training processes running: the next start re-attaches."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], *, launcher: Launcher | None = None
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.launcher = launcher or make_launcher(settings)
        self.slots = discover_slots(settings)
        self.supervisor = Supervisor(
            settings=settings, session_factory=session_factory, launcher=self.launcher, slots=self.slots
        )
        self.lock = LeaderLock(settings.data_dir / "scheduler.lock")
        self.reconciled: Counter[str] = Counter()
        self.tasks_reconciled: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        # job endings POSTed to the operator's webhook (app/scheduler/webhook.py), by the active one only
        self.webhook = FinishWebhook(settings, session_factory) if settings.webhook_url else None
        self._webhook_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the loop task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def active(self) -> bool:
        """Whether this scheduler owns the jobs (holds the lock) rather than standing by."""
        return self.lock.held

    async def start(self) -> None:
        """Take the lock and reconcile jobs left active by a previous run, then start the loop task."""
        if self.running:
            return
        log.info("scheduler: %s, launcher %s", self.slots.describe(), self.launcher.name)
        await self._try_lead()
        if not self.active:
            log.warning(
                "another process runs the scheduler for %s (see %s); this one stands by",
                self.settings.data_dir,
                self.lock.path,
            )
        self._stop_requested = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop_requested), name="tuneboard-scheduler")
        if self.webhook is not None:
            self._webhook_task = asyncio.create_task(
                self._webhook_loop(self.webhook, self._stop_requested), name="tuneboard-webhook"
            )

    async def stop(self) -> None:
        """Finish the current tick and end the loop; training processes keep running."""
        if self._task is None or self._stop_requested is None:
            return
        self._stop_requested.set()
        try:
            await self._task
            if self._webhook_task is not None:
                await self._webhook_task
        finally:
            self._task = None
            self._webhook_task = None
            self.lock.release()
        owned = self.supervisor.owned_job_ids()
        tasks = self.supervisor.tasks.owned_task_ids()
        if tasks:
            log.info(
                "scheduler stopped; task(s) %s keep running and are re-attached at the next start", tasks
            )
        if owned:
            log.info(
                "scheduler stopped; job(s) %s keep training and are re-attached at the next start", owned
            )

    def snapshot(self) -> dict[str, Any]:
        """What /api/health shows: slots, running jobs, loop state."""
        return {
            "running": self.running,
            "role": "active" if self.active else "standby",
            "interval_s": self.settings.scheduler_interval_s,
            "reconciled_at_start": dict(self.reconciled),
            "tasks_reconciled_at_start": dict(self.tasks_reconciled),
            **self.supervisor.snapshot(),
        }

    async def _try_lead(self) -> None:
        if self.active or not self.lock.try_acquire():
            return
        # whatever the previous owner left active is settled before anything new starts
        self.reconciled = await asyncio.to_thread(
            reconcile, self.session_factory, launcher=self.launcher, supervisor=self.supervisor
        )
        # exports and tries the previous owner ran: re-attach live exports, settle the rest
        self.tasks_reconciled = await asyncio.to_thread(self.supervisor.tasks.reconcile)

    async def _webhook_loop(self, webhook: FinishWebhook, stop_requested: asyncio.Event) -> None:
        """Its own task: a slow receiver (retries wait up to ~20 s) never delays a scheduler tick."""
        interval = max(1.0, self.settings.scheduler_interval_s)
        while not stop_requested.is_set():
            if self.active:
                try:
                    await asyncio.to_thread(webhook.tick)
                except Exception:  # noqa: BLE001 - a database hiccup: the next pass retries from the mark
                    log.exception("webhook: a pass failed; retrying")
            try:
                async with asyncio.timeout(interval):
                    await stop_requested.wait()
            except TimeoutError:
                pass

    async def _loop(self, stop_requested: asyncio.Event) -> None:
        interval = self.settings.scheduler_interval_s
        while not stop_requested.is_set():
            if not self.active:
                await self._try_lead()
            if self.active:
                # tick() does blocking database and process work: keep it off the event loop
                await asyncio.to_thread(self.supervisor.tick)
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the wait in a fresh task every tick,
            # which made the app's task count flicker between samples
            try:
                async with asyncio.timeout(interval):
                    await stop_requested.wait()
            except TimeoutError:
                pass
