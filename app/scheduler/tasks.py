"""Tasks on the scheduler: merged exports and try-the-adapter runs placed, launched and watched like jobs.

A task is a row in the `task` table (app/tasks/manager.py queues it). Each tick the supervisor claims the
queued tasks that fit (claim_next_task: the same write-locked slot accounting as training, so a task never
shares a GPU with a training job), launches `python -m <module> RUN_DIR <args>` through the configured
launcher (task_launcher) and watches it: a cancel request or its deadline kills it (the local process group,
or Ray's stop_job); its exit is classified into the row. After an app restart, reconcile() re-attaches a
live export (a local one: its pid and command line must match the row; a Ray one: its submission id, in
task.external_id, must still be pending or running) or settles the row with a reason.

With TUNEBOARD_LAUNCHER=ray and shared storage (no ray_remote_runs_dir), tasks are Ray jobs like training
attempts. With remote storage they stay on this machine (the local launcher): a merged export writes
RUN_DIR/merged and a try streams its answer through a file the app reads, so both must land in the app's
DATA_DIR, which a remote node does not see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import immediate_transaction
from app.jobs.status import ACTIVE, TERMINAL, JobStatus
from app.models import Task
from app.scheduler.claim import ClaimedTask, claim_next_task
from app.scheduler.launcher import ExitInfo, Launcher, LaunchSpec, WorkerHandle
from app.scheduler.local import LocalLauncher
from app.scheduler.placement import parse_assigned
from app.scheduler.ray_launcher import RayLauncher
from app.settings import Settings
from contract import tasks as exports  # RUN_DIR/exports/NAME(.json) of export tasks
from contract.tasks import MERGE_LOG, MERGED_DIR, read_merge_status, write_merge_status

log = logging.getLogger(__name__)

MAX_TASK_CLAIMS_PER_TICK = 64
KIND_WORDS = {"try": "a try-the-adapter generation", "merge": "a merged-model export", "export": "an export"}
_PROCESS_WORDS = {"try": "the generation process"} | dict.fromkeys(("merge", "export"), "the export process")
_MERGE_TIMEOUT = "TUNEBOARD_MERGE_TIMEOUT_S"
_TIMEOUT_SETTING = {"try": "TUNEBOARD_TRY_TIMEOUT_S"} | dict.fromkeys(("merge", "export"), _MERGE_TIMEOUT)


def runs_tasks_on_ray(settings: Settings) -> bool:
    """Whether tasks go to Ray: the Ray launcher with shared storage (a remote node's files never reach
    the app's DATA_DIR, where an export's merged/ and a try's answer must land)."""
    return settings.launcher == "ray" and not settings.ray_remote_runs_dir


def task_launcher_name(settings: Settings) -> str:
    """The name of the launcher tasks use with these settings ("ray" or "local")."""
    return "ray" if runs_tasks_on_ray(settings) else "local"


def task_launcher(settings: Settings, training: Launcher | None = None) -> Launcher:
    """The launcher for tasks: the training launcher when it is Ray with shared storage (`training`, or a
    new RayLauncher), else a local one."""
    if runs_tasks_on_ray(settings):
        if training is not None and isinstance(training, RayLauncher):
            return training
        return RayLauncher(settings)
    return LocalLauncher(python=settings.worker_python)


@dataclass
class TrackedTask:
    """One task process this supervisor owns."""

    task_id: int
    kind: str
    handle: WorkerHandle
    gpus: tuple[str, ...]
    deadline: float  # wall clock: killed after this
    input_path: Path | None
    launcher: Launcher  # the one that launched (or re-attached) it: polls and stops it
    stop_status: JobStatus | None = None  # what the row becomes once the killed process has ended
    stop_reason: str | None = None
    export: str | None = None  # an export task's RUN_DIR/exports/NAME


def _utc(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _settle_row(task: Task, status: JobStatus, reason: str | None, code: int | None) -> None:
    """Write a task's final status, reason and exit code."""
    task.status = status.value
    task.failure_reason = reason
    task.exit_code = code
    task.finished_at = datetime.now(UTC)


def _fail_merge_file(run_dir: Path, reason: str) -> None:
    """Make RUN_DIR/merge.json say failed (the contract the page polls) unless it already says so."""
    status = read_merge_status(run_dir) or {}
    if status.get("state") == "failed":
        return
    try:
        write_merge_status(run_dir, state="failed", stage="failed", progress=0.0, message=reason)
    except OSError as exc:
        log.warning("could not write %s/merge.json (%s)", run_dir, exc)


def merge_succeeded(run_dir: Path) -> bool:
    """Whether the export says it succeeded and its merged/ directory is there."""
    status = read_merge_status(run_dir) or {}
    return status.get("state") == "succeeded" and (run_dir / MERGED_DIR).is_dir()


def task_process(pid: Any, module: str, run_dir: Path) -> psutil.Process | None:
    """The process `pid` if it lives and runs `-m <module> <run_dir>` (a reused pid runs something else)."""
    if not isinstance(pid, int):
        return None
    try:
        proc = psutil.Process(pid)
        argv = proc.cmdline()
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return proc if alive and module in argv and str(run_dir) in argv else None


class TaskSupervisor:
    """Claims, launches and watches task processes on this machine's slots; one tick at a time."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: sessionmaker[Session],
        launcher: Launcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.launcher = launcher or task_launcher(settings)
        # re-attaches to a local task process left by an app that used the local launcher for tasks
        self._local = self.launcher if isinstance(self.launcher, LocalLauncher) else LocalLauncher()
        self.clock = clock
        self._tracked: dict[int, TrackedTask] = {}
        self._lock = threading.Lock()  # guards _tracked: snapshot() reads it from the event loop
        # the scheduler's loop and a request that wants its task started now may both tick: one at a time
        self._tick_lock = threading.Lock()

    # --- the loop body -------------------------------------------------------------------------

    def tick(self) -> bool:
        """Watch what runs, then start what fits; False when another thread was ticking already."""
        if not self._tick_lock.acquire(blocking=False):
            return False
        try:
            self.watch()
            self.launch_ready()
        finally:
            self._tick_lock.release()
        return True

    def launch_ready(self) -> list[int]:
        """Claim and launch queued tasks while they fit; return the task ids launched."""
        launched: list[int] = []
        for _ in range(MAX_TASK_CLAIMS_PER_TICK):
            claimed = claim_next_task(self.session_factory, settings=self.settings)
            if claimed is None:
                break
            if self._start(claimed):
                launched.append(claimed.task_id)
        return launched

    def watch(self) -> None:
        """Poll every owned task process once: exits, cancel requests, deadlines."""
        with self._lock:
            tracked = list(self._tracked.values())
        if not tracked:
            return
        now = self.clock()
        with self.session_factory() as session:
            result = session.execute(
                select(Task.id, Task.status).where(Task.id.in_([t.task_id for t in tracked]))
            )
            rows: dict[int, str] = {row.id: row.status for row in result}
        for item in tracked:
            try:
                self._watch_one(item, rows.get(item.task_id), now)
            except Exception:  # one odd task must not stop the others being watched
                log.exception("task %s: supervising it failed; retrying next tick", item.task_id)

    # --- what health shows ---------------------------------------------------------------------

    def busy_gpus(self) -> set[str]:
        """GPUs held by the task processes this supervisor watches."""
        with self._lock:
            return {g for t in self._tracked.values() for g in t.gpus}

    def owned_task_ids(self) -> list[int]:
        """Ids of the tasks whose processes this supervisor watches."""
        with self._lock:
            return sorted(self._tracked)

    def snapshot(self) -> list[dict[str, Any]]:
        """The running tasks, for the scheduler's part of /api/health."""
        with self._lock:
            tracked = sorted(self._tracked.values(), key=lambda t: t.task_id)
        return [
            {
                "task_id": t.task_id,
                "job_id": t.handle.job_id,
                "kind": t.kind,
                "pid": t.handle.pid,
                "external_id": t.handle.external_id,
                "gpus": list(t.gpus),
                "reattached": t.handle.attached,
                "stopping": t.stop_status.value if t.stop_status else None,
            }
            for t in tracked
        ]

    # --- starting ------------------------------------------------------------------------------

    def _start(self, claimed: ClaimedTask) -> bool:
        spec = LaunchSpec(
            job_id=claimed.job_id,
            run_dir=claimed.run_dir,
            gpus=claimed.gpus,
            attempt=1,
            module=claimed.module,
            args=claimed.args,
            log_path=claimed.log_path,
            stdout_path=claimed.stdout_path,
            task_id=claimed.task_id,
        )
        try:
            handle = self.launcher.launch(spec)
        except Exception as exc:
            log.exception("task %s: could not be launched", claimed.task_id)
            reason = f"could not start {_PROCESS_WORDS.get(claimed.kind, 'the task process')}: {exc}"
            if claimed.kind == "merge":
                _fail_merge_file(claimed.run_dir, reason)
            if claimed.kind == "export":
                exports.fail_export_file(claimed.run_dir, exports.export_name_of(claimed.args), reason)
            _remove(str(self._input_path(claimed.task_id) or ""))
            self._settle(claimed.task_id, JobStatus.FAILED, reason, None)
            return False
        item = TrackedTask(
            task_id=claimed.task_id,
            kind=claimed.kind,
            handle=handle,
            gpus=claimed.gpus,
            deadline=handle.started_at + claimed.timeout_s,
            input_path=self._input_path(claimed.task_id),
            launcher=self.launcher,
            export=exports.export_name_of(claimed.args) if claimed.kind == "export" else None,
        )
        with self._lock:
            self._tracked[claimed.task_id] = item
        with immediate_transaction(self.session_factory) as session:
            task = session.get(Task, claimed.task_id)
            if task is not None:
                task.pid = handle.pid
                task.external_id = handle.external_id
                task.launcher = self.launcher.name
                if task.status == JobStatus.STARTING.value:
                    task.status = JobStatus.RUNNING.value
        return True

    def _input_path(self, task_id: int) -> Path | None:
        with self.session_factory() as session:
            value = session.scalar(select(Task.input_path).where(Task.id == task_id))
        return Path(value) if value else None

    # --- watching ------------------------------------------------------------------------------

    def _watch_one(self, item: TrackedTask, status: str | None, now: float) -> None:
        exit_info = item.launcher.poll(item.handle)
        if exit_info is not None:
            self._finish(item, exit_info)
            with self._lock:
                self._tracked.pop(item.task_id, None)
            return
        if item.stop_status is not None:
            item.launcher.kill(item.handle)  # again: SIGKILL cannot be ignored, but a new child may appear
            return
        if status is None or status == JobStatus.CANCELLING.value or JobStatus(status) in TERMINAL:
            # nothing is saved by a task midway: a cancelled one is killed at once
            self._stop(item, JobStatus.CANCELLED, "cancelled on request")
        elif now > item.deadline:
            timeout = item.deadline - item.handle.started_at
            if item.kind == "merge":
                reason = (
                    f"the export was stopped after {timeout:g} s (TUNEBOARD_MERGE_TIMEOUT_S); "
                    "raise the limit for large models"
                )
            else:
                setting = _TIMEOUT_SETTING.get(item.kind, "its timeout")
                reason = f"stopped after {timeout:g} s ({setting})"
            self._stop(item, JobStatus.FAILED, reason)

    def _stop(self, item: TrackedTask, status: JobStatus, reason: str) -> None:
        where = f"Ray job {item.handle.external_id}" if item.handle.external_id else f"pid {item.handle.pid}"
        log.info("task %s: killing %s (%s)", item.task_id, where, reason)
        item.stop_status, item.stop_reason = status, reason
        item.launcher.kill(item.handle)

    def _finish(self, item: TrackedTask, exit_info: ExitInfo) -> None:
        """Classify an ended task process into its row (and, for an export, into merge.json)."""
        run_dir = item.handle.run_dir
        status, reason = self._verdict(item, exit_info)
        if item.kind == "merge" and status is not JobStatus.SUCCEEDED:
            _fail_merge_file(run_dir, reason or "the export did not finish")
        if item.kind == "export" and status is not JobStatus.SUCCEEDED:
            exports.fail_export_file(run_dir, item.export, reason or "the export did not finish")
        if item.input_path is not None:
            item.input_path.unlink(missing_ok=True)
        self._settle(item.task_id, status, reason, exit_info.returncode)
        log.info("task %s (%s): %s (%s)", item.task_id, item.kind, status.value, exit_info.describe())

    def _verdict(self, item: TrackedTask, exit_info: ExitInfo) -> tuple[JobStatus, str | None]:
        if item.stop_status is not None:
            return item.stop_status, item.stop_reason
        words = _PROCESS_WORDS.get(item.kind, "the task process")
        if item.kind == "export":
            if exports.export_succeeded(item.handle.run_dir, item.export) and exit_info.returncode in (
                0,
                None,
            ):
                return JobStatus.SUCCEEDED, None
            said = exports.export_failure(item.handle.run_dir, item.export)
            return JobStatus.FAILED, said or f"{words} ended with {exit_info.describe()} before finishing"
        if item.kind == "merge":
            ok = merge_succeeded(item.handle.run_dir) and exit_info.returncode in (0, None)
            if ok:
                return JobStatus.SUCCEEDED, None
            written = read_merge_status(item.handle.run_dir) or {}
            if written.get("state") == "failed" and written.get("message"):
                return JobStatus.FAILED, str(written["message"])
            return (
                JobStatus.FAILED,
                f"{words} ended with {exit_info.describe()} before finishing; see {MERGE_LOG}",
            )
        if exit_info.returncode == 0:
            return JobStatus.SUCCEEDED, None
        return JobStatus.FAILED, f"{words} ended with {exit_info.describe()}"

    def _settle(self, task_id: int, status: JobStatus, reason: str | None, code: int | None) -> None:
        with immediate_transaction(self.session_factory) as session:
            task = session.get(Task, task_id)
            if task is not None and JobStatus(task.status) not in TERMINAL:
                _settle_row(task, status, reason, code)

    # --- after a restart -----------------------------------------------------------------------

    def reconcile(self) -> Counter[str]:
        """Settle every task a previous app process left queued or active; count what happened."""
        with self.session_factory() as session:
            ids = list(
                session.scalars(
                    select(Task.id)
                    .where(Task.status.in_([JobStatus.QUEUED.value, *(s.value for s in ACTIVE)]))
                    .order_by(Task.id)
                )
            )
        counts: Counter[str] = Counter()
        for task_id in ids:
            try:
                counts[self._reconcile_one(task_id)] += 1
            except Exception:
                counts["error"] += 1
                log.exception(
                    "task %s: reconciliation failed; it stays as it is until the next start", task_id
                )
        if ids:
            log.info("reconciled %d task(s): %s", len(ids), dict(counts))
        return counts

    def _reconcile_one(self, task_id: int) -> str:
        with immediate_transaction(self.session_factory) as session:
            task = session.get(Task, task_id)
            if task is None or JobStatus(task.status) in TERMINAL:
                return "skipped"
            run_dir = Path(task.run_dir)
            if task.kind == "try":
                # its answer went to a client of the app that stopped: nobody reads it any more
                found = self._find_live(task, run_dir)
                if found is not None:
                    found[0].kill(found[1])
                _settle_row(task, JobStatus.CANCELLED, "the app restarted while it ran; ask again", None)
                _remove(task.input_path, task.output_path)
                return "cancelled"
            if task.status == JobStatus.QUEUED.value:
                return "queued"  # still waits for its slot; the loop places it
            found = self._find_live(task, run_dir)
            if found is not None:
                self._adopt(task, *found)
                return "reattached"
            export = exports.export_name_of(task.args) if task.kind == "export" else None
            if (task.kind == "merge" and merge_succeeded(run_dir)) or exports.export_succeeded(
                run_dir, export
            ):
                _settle_row(task, JobStatus.SUCCEEDED, None, None)
                _remove(task.input_path)
                return "finished"
            if task.pid is None and task.status == JobStatus.STARTING.value:
                reason = "the app stopped before the process was started; start it again"
            else:
                reason = "the process ended while the app was down; start it again"
            written = (read_merge_status(run_dir) or {}) if task.kind == "merge" else {}
            if written.get("state") == "failed" and written.get("message"):
                reason = str(written["message"])  # the export's own account of why
            elif task.kind == "merge":
                reason = f"the export process is gone: {reason}"
                _fail_merge_file(run_dir, reason)
            if task.kind == "export":
                reason = exports.export_failure(run_dir, export) or f"the export process is gone: {reason}"
                exports.fail_export_file(run_dir, export, reason)
            _settle_row(task, JobStatus.FAILED, reason, None)
            _remove(task.input_path)
            log.warning("task %s (%s): %s", task.id, task.kind, reason)
            return "lost"

    def _find_live(self, task: Task, run_dir: Path) -> tuple[Launcher, WorkerHandle] | None:
        """The task's process if it still runs, with the launcher that watches it: a Ray job by its
        submission id, a local process by its pid and command line."""
        if task.launcher == "ray":
            if not task.external_id:
                return None  # the app stopped before Ray accepted it (or before the id was recorded)
            ray = self.launcher if isinstance(self.launcher, RayLauncher) else None
            if ray is None:
                if not self.settings.ray_address:
                    log.warning(
                        "task %s: ran as Ray job %s, but Ray is not configured now", task.id, task.external_id
                    )
                    return None
                ray = RayLauncher(self.settings)
            handle = ray.attach_submission(
                job_id=task.job_id,
                run_dir=run_dir,
                submission_id=task.external_id,
                task_log=Path(task.log_path),
            )
            return None if handle is None else (ray, handle)
        candidates: list[Any] = [task.pid]
        if task.kind == "merge":  # the export writes its own pid: covers an app that died before recording it
            candidates.append((read_merge_status(run_dir) or {}).get("pid"))
        export = exports.export_name_of(task.args) if task.kind == "export" else None
        if export is not None:
            candidates.append((exports.read_export_status(run_dir, export) or {}).get("pid"))
        for pid in candidates:
            proc = task_process(pid, task.module, run_dir)
            if proc is not None:
                handle = WorkerHandle(
                    job_id=task.job_id,
                    run_dir=run_dir,
                    pid=proc.pid,
                    started_at=self.clock(),
                    attached=True,
                    native=proc,
                )
                return self._local, handle
        return None

    def _adopt(self, task: Task, launcher: Launcher, handle: WorkerHandle) -> None:
        task.pid = handle.pid
        if task.status == JobStatus.STARTING.value:
            task.status = JobStatus.RUNNING.value
        began = _utc(task.started_at) or self.clock()
        item = TrackedTask(
            task_id=task.id,
            kind=task.kind,
            handle=handle,
            gpus=parse_assigned(task.assigned_gpus),
            deadline=began + task.timeout_s,
            input_path=Path(task.input_path) if task.input_path else None,
            launcher=launcher,
            export=exports.export_name_of(task.args) if task.kind == "export" else None,
        )
        with self._lock:
            self._tracked[task.id] = item
        where = f"Ray job {handle.external_id}" if handle.external_id else f"pid {handle.pid}"
        log.info("task %s (%s): re-attached to running %s", task.id, task.kind, where)


def _remove(*paths: str | None) -> None:
    for path in paths:
        if path:
            Path(path).unlink(missing_ok=True)
