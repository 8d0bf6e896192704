"""The Scheduler the app's lifespan starts: reconcile once, then tick the supervisor every interval."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.scheduler.gpus import discover_slots
from app.scheduler.launcher import Launcher
from app.scheduler.local import LocalLauncher
from app.scheduler.reconcile import reconcile
from app.scheduler.supervisor import Supervisor
from app.settings import Settings

log = logging.getLogger(__name__)


def make_launcher(settings: Settings) -> Launcher:
    """The launcher named by settings.launcher."""
    if settings.launcher == "local":
        return LocalLauncher(python=settings.worker_python, worker_module=settings.worker_module)
    raise ValueError(
        f"unknown launcher {settings.launcher!r}; "
        "set TUNEBOARD_LAUNCHER=local (the Ray launcher is not built yet)"
    )


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
        self.reconciled: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the loop task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Reconcile jobs left active by a previous run, then start the loop task."""
        if self.running:
            return
        log.info("scheduler: %s, launcher %s", self.slots.describe(), self.launcher.name)
        self.reconciled = await asyncio.to_thread(
            reconcile, self.session_factory, launcher=self.launcher, supervisor=self.supervisor
        )
        self._stop_requested = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop_requested), name="tuneboard-scheduler")

    async def stop(self) -> None:
        """Finish the current tick and end the loop; training processes keep running."""
        if self._task is None or self._stop_requested is None:
            return
        self._stop_requested.set()
        try:
            await self._task
        finally:
            self._task = None
        owned = self.supervisor.owned_job_ids()
        if owned:
            log.info(
                "scheduler stopped; job(s) %s keep training and are re-attached at the next start", owned
            )

    def snapshot(self) -> dict[str, Any]:
        """What /api/health shows: slots, running jobs, loop state."""
        return {
            "running": self.running,
            "interval_s": self.settings.scheduler_interval_s,
            "reconciled_at_start": dict(self.reconciled),
            **self.supervisor.snapshot(),
        }

    async def _loop(self, stop_requested: asyncio.Event) -> None:
        interval = self.settings.scheduler_interval_s
        while not stop_requested.is_set():
            # tick() does blocking database and process work: keep it off the event loop
            await asyncio.to_thread(self.supervisor.tick)
            try:
                await asyncio.wait_for(stop_requested.wait(), timeout=interval)
            except TimeoutError:
                pass
