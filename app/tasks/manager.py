"""Hand short worker-side tasks (try-the-adapter, merged export) to the scheduler: one at a time per job.

A task is a row in the `task` table; the scheduler (app/scheduler/tasks.py) places it on the machine's
slots with the training jobs (a task that asks for a GPU waits for one no job holds), launches it with the
configured launcher (Ray with shared storage, else local) and watches it, and after an app restart
re-attaches a live export. This module only queues tasks, reads their rows and cancels a try whose client
left; streaming a try's answer from the file its process writes is app/tasks/try_stream.py, reading an
export's progress app/tasks/merge_status.py. The one thing kept in memory is a request's reservation
between its checks and its row.

With no scheduler in this app (TUNEBOARD_SCHEDULER_ENABLED=false) the manager ticks a TaskSupervisor of
its own while tasks are in flight: the same placement, launcher and watching, just driven from here. In a
standby app the leader's scheduler places the rows; a try's answer still streams here through its file.

What a task loads (model, revision, trust_remote_code, quantization) is the job's config as stored in the
database, validated again and handed over as a task-input file under DATA_DIR/tmp, never anything the
worker wrote: RUN_DIR is worker-writable (and uploadable with the job token), so its
adapter/tuneboard_config.json could otherwise name any local directory's code with trust_remote_code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import immediate_transaction
from app.jobs.status import ACTIVE, TERMINAL, JobStatus
from app.models import Task
from app.scheduler.local import child_env
from app.scheduler.placement import parse_assigned
from app.scheduler.tasks import KIND_WORDS, TaskSupervisor, task_launcher_name
from app.settings import Settings
from app.tasks import try_stream
from app.tasks.merge_status import MERGE_MODULE, merge_status
from app.tasks.try_stream import TRY_MODULE
from contract.config import config_to_dict, parse_config
from contract.tasks import MERGE_LOG, write_merge_status

log = logging.getLogger(__name__)

STALE_GRACE_S = 60.0  # a reservation older than its task's timeout plus this is dropped
NEVER_STARTED_S = 15.0  # a reservation whose stream never began by then is dropped
SETTLE_POLL_S = 0.05  # how often a cancelled task's row is read while it settles
SETTLE_WAIT_S = 5.0  # how long a finished stream waits for its killed process to be recorded
WAITING_IDS = (JobStatus.QUEUED.value, *(s.value for s in ACTIVE))  # a task that holds its job


class TaskBusy(Exception):
    """The job already runs a short task; the message names it."""


def task_config(stored: Any) -> dict[str, Any]:
    """The job's stored config validated by JobConfig: what a task may load (else ConfigError)."""
    return config_to_dict(parse_config(stored))


@dataclass
class TaskClaim:
    """One task of one job: reserved by a request, then (task_id set) a row the scheduler places."""

    job_id: int
    kind: str  # "try" | "merge"
    started: float
    timeout_s: float
    pid: int | None = None
    task_id: int | None = None
    streaming: bool = False  # a try whose response body began (its client is there)


def active_task(session: Session, job_id: int, kind: str | None = None) -> Task | None:
    """The job's queued or active task (of `kind`), if any."""
    query = select(Task).where(Task.job_id == job_id, Task.status.in_(WAITING_IDS))
    if kind is not None:
        query = query.where(Task.kind == kind)
    return session.scalars(query.order_by(Task.id.desc()).limit(1)).first()


class TaskManager:
    """Queues this app's short tasks with the scheduler, at most one per job."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.try_module = TRY_MODULE  # tests point these at stand-ins (tests/fakes)
        self.merge_module = MERGE_MODULE
        self.export_module = "worker.export"  # contract.tasks.EXPORT_MODULE (app/tasks/exports.py)
        self._scheduler: Callable[[], Any] = lambda: None
        self._reserved: dict[int, TaskClaim] = {}
        self._own: TaskSupervisor | None = None
        self._ticker: asyncio.Task[None] | None = None  # strong reference while it runs

    def bind(self, app: FastAPI) -> None:
        """Use the app's database and scheduler (idempotent; get_task_manager calls it)."""
        if self.session_factory is None:
            self.session_factory = app.state.session_factory
        self._scheduler = lambda: getattr(app.state, "scheduler", None)

    def _factory(self) -> sessionmaker[Session]:
        if self.session_factory is None:
            raise RuntimeError("TaskManager has no database: pass session_factory or call bind(app)")
        return self.session_factory

    def supervisor(self) -> TaskSupervisor | None:
        """Who places this app's tasks now: the scheduler's, this manager's own (no scheduler), or None
        (this app stands by; the leader places them)."""
        scheduler = self._scheduler()
        if scheduler is not None:
            return scheduler.supervisor.tasks if scheduler.active else None
        if self._own is None:
            self._own = TaskSupervisor(settings=self.settings, session_factory=self._factory())
        return self._own

    def has_scheduler_loop(self) -> bool:
        """Whether this app runs a scheduler loop (else nothing but this manager ticks its tasks)."""
        return self._scheduler() is not None

    async def nudge(self) -> None:
        """Tick the task supervisor now (a task should not wait for the next scheduler round)."""
        supervisor = self.supervisor()
        if supervisor is not None:
            await anyio.to_thread.run_sync(supervisor.tick)

    # ----------------------------------------------------------------------------------- bookkeeping

    def running(self, job_id: int) -> TaskClaim | None:
        """The task this job has now (reserved, queued or running), if any; stale reservations are dropped."""
        claim = self._reserved.get(job_id)
        if claim is not None and claim.task_id is None:
            age = time.monotonic() - claim.started
            # a response whose client left before its body started never runs the generator that would
            # queue the task and release the reservation: one that never streamed soon counts as stale
            if age > claim.timeout_s + STALE_GRACE_S or (not claim.streaming and age > NEVER_STARTED_S):
                log.warning("job %s: dropping a stale %s reservation", job_id, claim.kind)
                self._reserved.pop(job_id, None)
                return None
            return claim
        with self._factory()() as session:
            task = active_task(session, job_id)
            if task is None:
                return None
            if claim is not None and claim.task_id == task.id:
                claim.pid = task.pid
                return claim
            return TaskClaim(
                job_id=job_id,
                kind=task.kind,
                started=time.monotonic(),
                timeout_s=task.timeout_s,
                pid=task.pid,
                task_id=task.id,
            )

    def claim(self, job_id: int, kind: str, timeout_s: float) -> TaskClaim:
        """Reserve the job for one task (no await in here: check and set are atomic on the event loop)."""
        current = self.running(job_id)
        if current is not None:
            raise TaskBusy(
                f"job {job_id} is already running {KIND_WORDS.get(current.kind, current.kind)}; "
                "wait for it to finish, then try again"
            )
        # each task loads a whole model: a cap keeps a few curious clicks from exhausting memory
        with self._factory()() as session:
            queued_or_running = session.scalar(
                select(func.count()).select_from(Task).where(Task.status.in_(WAITING_IDS))
            )
        reserved = [j for j, c in list(self._reserved.items()) if c.task_id is None and self.running(j)]
        others = int(queued_or_running or 0) + len(reserved)
        if others >= self.settings.tasks_max_concurrent:
            raise TaskBusy(
                f"{others} short tasks (tries, exports) are running already, the most at once "
                "(TUNEBOARD_TASKS_MAX_CONCURRENT); try again when one has finished"
            )
        claim = TaskClaim(job_id=job_id, kind=kind, started=time.monotonic(), timeout_s=timeout_s)
        self._reserved[job_id] = claim
        return claim

    def release(self, claim: TaskClaim) -> None:
        """Free the job for its next task (only if `claim` is still the job's current reservation)."""
        if self._reserved.get(claim.job_id) is claim:
            del self._reserved[claim.job_id]

    def command(self, module: str, *args: str) -> list[str]:
        """The argv of a task process (what the local launcher runs for its row)."""
        return [self.settings.worker_python or sys.executable, "-m", module, *args]

    def write_task_input(self, config: dict[str, Any], kind: str) -> Path:
        """Write `config` (task_config) to DATA_DIR/tmp, where only the app writes; the caller deletes it."""
        fd, name = tempfile.mkstemp(prefix=f"{kind}-config-", suffix=".json", dir=self.tmp_dir())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        return Path(name)

    def env(self) -> dict[str, str]:
        """A task's environment: the app's minus its secrets (the launcher sets the placed GPUs)."""
        env = child_env(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def tmp_dir(self) -> Path:
        tmp_dir = self.settings.data_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return tmp_dir

    def queue_task(
        self, claim: TaskClaim, run_dir: Path, session: Session | None = None, **fields: Any
    ) -> int:
        """Queue the task's row in `session` (the request's: committed with it) or in its own transaction."""
        task = Task(
            job_id=claim.job_id,
            kind=claim.kind,
            status=JobStatus.QUEUED.value,
            run_dir=str(run_dir),
            gpus_requested=1 if parse_assigned(self.settings.task_gpus) else 0,
            launcher=task_launcher_name(self.settings),  # the supervisor records the one it used
            **fields,
        )
        if session is not None:
            session.add(task)
            session.flush()
        else:
            with immediate_transaction(self._factory()) as own:
                own.add(task)
                own.flush()
        claim.task_id = task.id
        return task.id

    def task_row(self, task_id: int) -> tuple[str, int | None, int | None] | None:
        """(status, pid, exit_code) of a task, or None when its row is gone."""
        with self._factory()() as session:
            task = session.get(Task, task_id)
            return None if task is None else (task.status, task.pid, task.exit_code)

    def cancel_task(self, task_id: int) -> None:
        """Ask the scheduler to stop a task (it kills the process group on its next tick)."""
        with immediate_transaction(self._factory()) as session:
            task = session.get(Task, task_id)
            if task is None or JobStatus(task.status) in TERMINAL:
                return
            if task.status == JobStatus.QUEUED.value:  # never started: nothing to kill
                task.status = JobStatus.CANCELLED.value
                task.failure_reason = "its client left before it started"
            else:
                task.status = JobStatus.CANCELLING.value

    async def wait_settled(self, task_id: int) -> None:
        """Wait (bounded) until the task's row is final, ticking our supervisor meanwhile."""
        deadline = time.monotonic() + SETTLE_WAIT_S
        while time.monotonic() < deadline:
            await self.nudge()
            row = await anyio.to_thread.run_sync(self.task_row, task_id)
            if row is None or JobStatus(row[0]) in TERMINAL:
                return
            await asyncio.sleep(SETTLE_POLL_S)
        log.warning("task %s: its process was not recorded as ended within %g s", task_id, SETTLE_WAIT_S)

    # ----------------------------------------------------------------------------------- try the adapter

    def generation_lines(
        self,
        claim: TaskClaim,
        run_dir: Path,
        *,
        config: dict[str, Any],
        prompt: str,
        decoding: try_stream.Decoding,
        history: list[dict[str, str]] | None = None,
        idle_every_s: float = 15.0,
    ) -> AsyncGenerator[dict[str, Any] | None, None]:
        """Queue the generation task and yield its JSON lines (app/tasks/try_stream.py streams them)."""
        return try_stream.generation_lines(
            self,
            claim,
            run_dir,
            config=config,
            prompt=prompt,
            decoding=decoding,
            history=history,
            idle_every_s=idle_every_s,
        )

    # ----------------------------------------------------------------------------------- merged export

    async def start_merge(
        self, job_id: int, run_dir: Path, *, config: dict[str, Any], session: Session | None = None
    ) -> dict[str, Any]:
        """Queue the export with the scheduler (TaskBusy if the job has a task); return its first status.

        A write request already holds SQLite's write lock: pass its session, and the row is committed with
        the request (the scheduler sees it then).
        """
        active = await anyio.to_thread.run_sync(self.has_active, job_id, "merge")
        if merge_status(run_dir, active=active)["state"] in ("starting", "running"):
            raise TaskBusy(f"job {job_id} is already exporting a merged model; wait for it to finish")
        claim = self.claim(job_id, "merge", self.settings.merge_timeout_s)
        try:
            write_merge_status(
                run_dir,
                state="starting",
                stage="starting",
                progress=0.0,
                message="waiting for the scheduler to start the export process",
            )
        except BaseException:
            self.release(claim)
            raise
        await self.queue_claimed(
            claim,
            run_dir,
            config=config,
            kind="merge",
            module=self.merge_module,
            args=lambda path: ["--config", path],
            log_path=run_dir / MERGE_LOG,
            session=session,
        )
        return merge_status(run_dir, active=True)

    async def queue_claimed(
        self,
        claim: TaskClaim,
        run_dir: Path,
        *,
        config: dict[str, Any],
        kind: str,
        module: str,
        args: Callable[[str], list[str]],
        log_path: Path,
        session: Session | None,
    ) -> None:
        """Write the task input, queue the claimed task (merge, export) and release the claim: the task row
        holds the job from then on. The input file goes again when queueing fails."""
        config_file: Path | None = None
        try:
            config_file = self.write_task_input(config, kind)
            path = str(config_file)
            await anyio.to_thread.run_sync(
                lambda: self.queue_task(
                    claim,
                    run_dir,
                    module=module,
                    args=args(path),
                    input_path=path,
                    log_path=str(log_path),
                    timeout_s=self.settings.merge_timeout_s,
                    session=session,
                )
            )
        except BaseException:
            if config_file is not None:
                config_file.unlink(missing_ok=True)
            raise
        finally:
            self.release(claim)
        if session is None:
            await self.nudge()
        self._keep_ticking()

    def has_active(self, job_id: int, kind: str) -> bool:
        """Whether the job has a queued or running task of `kind`."""
        with self._factory()() as session:
            return active_task(session, job_id, kind) is not None

    def _keep_ticking(self) -> None:
        """With no scheduler loop in this app, tick our own supervisor until it has nothing left to do."""
        if self.has_scheduler_loop() or (self._ticker is not None and not self._ticker.done()):
            return
        self._ticker = asyncio.create_task(self._tick_while_busy(), name="tuneboard-task-ticker")

    async def _tick_while_busy(self) -> None:
        supervisor = self.supervisor()
        while supervisor is not None:
            await anyio.to_thread.run_sync(supervisor.tick)
            if not supervisor.owned_task_ids() and not await anyio.to_thread.run_sync(self._any_queued):
                return
            await asyncio.sleep(self.settings.scheduler_interval_s)

    def _any_queued(self) -> bool:
        with self._factory()() as session:
            return (
                session.scalar(select(Task.id).where(Task.status == JobStatus.QUEUED.value).limit(1))
                is not None
            )


def get_task_manager(request: Request) -> TaskManager:
    """The app's TaskManager, created on first use (app.state.tasks) and bound to its database."""
    manager = getattr(request.app.state, "tasks", None)
    if manager is None:
        manager = TaskManager(request.app.state.settings)
        request.app.state.tasks = manager
    manager.bind(request.app)
    return manager
