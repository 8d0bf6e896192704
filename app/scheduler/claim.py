"""Claiming the next job under the database write lock, and preparing its run directory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import immediate_transaction
from app.jobs.service import transition
from app.jobs.status import ACTIVE, JobStatus
from app.models import Job, Task
from app.scheduler.gpus import Slots
from app.scheduler.placement import (
    QueuedJob,
    choose_placement,
    choose_task_gpus,
    impossible_reason,
    parse_assigned,
)
from app.settings import Settings
from contract.preference import init_adapter_job
from contract.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this scheduler now owns (status starting), with what the launcher needs."""

    job_id: int
    run_dir: Path
    gpus: tuple[str, ...]  # empty: CPU
    attempt: int
    token: str  # the only copy of the plain token; it goes to RUN_DIR/job.json and nowhere else
    config: dict[str, Any]

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"ClaimedJob(job_id={self.job_id}, gpus={self.gpus!r}, attempt={self.attempt})"


class RunDirNotOwned(RuntimeError):
    """The run directory exists but is not this job's: it is never reused."""


def new_run_name(job_id: int) -> str:
    """A run directory name no later claim, in this database or any that replaces it, can repeat."""
    # the id alone repeats when ids start again (a new, restored or migrated database on this data dir)
    return f"job-{job_id}-{secrets.token_hex(6)}"


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in job.token_hash (ingest compares against it)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def slots_in_use(session: Session) -> tuple[set[str], int]:
    """GPUs held by active jobs and tasks, and the number of CPU slots held by active jobs.

    CPU tasks hold no training CPU slot: they are few (settings.tasks_max_concurrent) and short, and a
    try-the-adapter answer should not wait behind a CPU training run.
    """
    active = [s.value for s in ACTIVE]
    rows = session.execute(
        select(Job.assigned_gpus).where(Job.status.in_(active), Job.assigned_gpus.is_not(None))
    ).scalars()
    gpus: set[str] = set()
    cpu = 0
    for assigned in rows:
        held = parse_assigned(assigned)
        if held:
            gpus.update(held)
        else:
            cpu += 1
    for assigned in session.execute(
        select(Task.assigned_gpus).where(Task.status.in_(active), Task.assigned_gpus.is_not(None))
    ).scalars():
        gpus.update(parse_assigned(assigned))
    return gpus, cpu


@dataclass(frozen=True)
class ClaimedTask:
    """A task this scheduler now owns (status starting), with what the launcher needs."""

    task_id: int
    job_id: int
    kind: str
    module: str
    args: tuple[str, ...]
    run_dir: Path
    log_path: Path
    stdout_path: Path | None
    gpus: tuple[str, ...]
    timeout_s: float


def task_gpu_choices(settings: Settings) -> list[str]:
    """The GPUs tasks may use (settings.task_gpus, e.g. "0"); empty: tasks run on the CPU."""
    return list(parse_assigned(settings.task_gpus))


def claim_next_task(factory: sessionmaker[Session], *, settings: Settings) -> ClaimedTask | None:
    """Claim the oldest queued task that fits (status → starting, GPUs assigned), or None.

    The same write-locked transaction and slot accounting as claim_next_job: a task that asks for a GPU
    waits until one of settings.task_gpus is held by no training job and no other task.
    """
    with immediate_transaction(factory) as session:
        queued = list(
            session.scalars(select(Task).where(Task.status == JobStatus.QUEUED.value).order_by(Task.id))
        )
        if not queued:
            return None
        busy_gpus, _ = slots_in_use(session)
        allowed = task_gpu_choices(settings)
        for task in queued:
            gpus = choose_task_gpus(task.gpus_requested, allowed, busy_gpus)
            if gpus is None:
                continue
            task.status = JobStatus.STARTING.value
            task.assigned_gpus = ",".join(gpus)
            task.started_at = datetime.now(UTC)
            session.flush()
            return ClaimedTask(
                task_id=task.id,
                job_id=task.job_id,
                kind=task.kind,
                module=task.module,
                args=tuple(task.args or ()),
                run_dir=Path(task.run_dir),
                log_path=Path(task.log_path),
                stdout_path=Path(task.output_path) if task.output_path else None,
                gpus=gpus,
                timeout_s=task.timeout_s,
            )
        return None


def adapter_dependency(session: Session, job: Job) -> tuple[bool, str | None]:
    """(wait, failure reason) for a job that starts from another job's adapter (init_adapter: job:<id>).

    It waits while that job has not succeeded yet, so "SFT, then DPO from its adapter" can be queued at
    once; it fails, saying what to do, when that job is gone or ended without an adapter.
    """
    parent_id = init_adapter_job(str((job.config or {}).get("init_adapter") or "") or None)
    if parent_id is None:
        return False, None
    parent = session.get(Job, parent_id)
    if parent is None:
        return False, f"it starts from job {parent_id}'s adapter, but job {parent_id} no longer exists"
    if parent.status == JobStatus.SUCCEEDED.value:
        return False, None
    if parent.status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
        return False, (
            f"it starts from job {parent_id}'s adapter, but job {parent_id} ended {parent.status}: "
            f"resume job {parent_id}, then resume this job"
        )
    return True, None


def claim_next_job(
    factory: sessionmaker[Session], *, settings: Settings, slots: Slots, launcher: str = "local"
) -> ClaimedJob | None:
    """Claim the next placeable queued job (status → starting), or None when nothing fits now.

    Runs in one BEGIN IMMEDIATE transaction, so slot usage is read and the claim written under the
    write lock: two schedulers (or threads) can never hand the same GPU out twice. Queued jobs that
    can never fit this machine are failed on the way with a reason that says what to change.
    """
    with immediate_transaction(factory) as session:
        queued = list(session.scalars(select(Job).where(Job.status == JobStatus.QUEUED.value)))
        if not queued:
            return None
        candidates: list[QueuedJob] = []
        now = datetime.now(UTC)
        for job in queued:
            reason = impossible_reason(job.gpus_requested, slots)
            if reason is None:
                waiting, reason = adapter_dependency(session, job)
                if waiting:
                    continue  # starts once the job whose adapter it continues has succeeded
            if reason is not None:
                log.warning("job %s can never run here: %s", job.id, reason)
                transition(session, job=job, to=JobStatus.FAILED, reason=reason)
                continue
            queued_at = job.queued_at or job.created_at
            if queued_at.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
                queued_at = queued_at.replace(tzinfo=UTC)
            candidates.append(
                QueuedJob(
                    id=job.id,
                    priority=job.priority,
                    gpus=job.gpus_requested,
                    waited_s=(now - queued_at).total_seconds(),
                )
            )
        busy_gpus, busy_cpu = slots_in_use(session)
        placement = choose_placement(
            candidates, slots, busy_gpus, busy_cpu, reserve_after_s=settings.gpu_reserve_after_s
        )
        if placement is None:
            return None
        job = next(j for j in queued if j.id == placement.job_id)
        transition(session, job=job, to=JobStatus.STARTING)
        token = secrets.token_urlsafe(32)
        # a resume continues in the directory its first attempt made; a first claim names a new one
        if job.run_dir and job.attempt:
            run_dir = Path(job.run_dir)
        else:
            run_dir = settings.runs_dir / new_run_name(job.id)
        job.assigned_gpus = placement.assigned
        job.attempt = (job.attempt or 0) + 1
        job.run_dir = str(run_dir)
        job.token_hash = hash_token(token)
        job.launcher = launcher  # reconciliation after a restart only settles its own launcher's jobs
        job.pid = None
        job.exit_code = None
        job.failure_reason = None
        job.stderr_tail = None
        job.heartbeat_at = None
        job.finished_at = None
        session.flush()
        return ClaimedJob(
            job_id=job.id,
            run_dir=run_dir,
            gpus=placement.gpus,
            attempt=job.attempt,
            token=token,
            config=dict(job.config),
        )


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), atomically via a temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply when the file already existed
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)


def _owner_record(claimed: ClaimedJob) -> dict[str, Any]:
    return {"job_id": claimed.job_id, "run": claimed.run_dir.name}


def _claim_run_dir(claimed: ClaimedJob) -> RunDir:
    """Make the job's run directory (0700), or prove an existing one is this job's before reusing it."""
    run = RunDir(claimed.run_dir)
    run.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        run.root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(run.root, 0o700)  # mkdir's mode is narrowed by the umask, never widened; be exact
        _write_private(run.owner, json.dumps(_owner_record(claimed)) + "\n")
        return run
    if claimed.attempt <= 1:
        # a first attempt starts empty: whatever is there (checkpoints, an adapter) is another job's
        raise RunDirNotOwned(
            f"run directory {run.root} already exists and a new job never reuses one; "
            "move it aside, then resume"
        )
    try:
        owner = json.loads(run.owner.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # made before run directories had owners: job.run_dir (set only by this job's own earlier claim)
        # is the proof; record it so the next resume checks the file
        log.info("job %s: %s has no owner record; writing one", claimed.job_id, run.root)
        _write_private(run.owner, json.dumps(_owner_record(claimed)) + "\n")
        owner = _owner_record(claimed)
    except (OSError, ValueError) as exc:
        raise RunDirNotOwned(f"run directory {run.root}: its owner record is unreadable ({exc})") from None
    if owner != _owner_record(claimed):
        raise RunDirNotOwned(
            f"run directory {run.root} belongs to job {owner.get('job_id')!r} (run {owner.get('run')!r}), "
            f"not this job; its checkpoints are not resumed"
        )
    os.chmod(run.root, 0o700)  # tighten directories made before run directories were private
    return run


def prepare_run_dir(claimed: ClaimedJob, *, app_url: str) -> RunDir:
    """Create RUN_DIR (0700, owned) with config.json and job.json (0600); clear an earlier outcome."""
    run = _claim_run_dir(claimed)
    # a resumed job keeps its checkpoints, but an old outcome or cancel request is not this attempt's
    for stale in (run.outcome, run.control):
        stale.unlink(missing_ok=True)
    run.config.write_text(json.dumps(claimed.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    job_info = {"job_id": claimed.job_id, "app_url": app_url, "token": claimed.token}
    _write_private(run.job, json.dumps(job_info) + "\n")
    return run
