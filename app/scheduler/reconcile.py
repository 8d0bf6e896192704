"""Start-up reconciliation: settle every job the database says is active, before the loop starts.

After a restart (or a crash) the database may hold starting/running/cancelling jobs. For each one,
in its own transaction and its own try/except (so one odd row never blocks the others):
  - its worker still runs           → re-attach and keep supervising it;
  - it ended and wrote outcome.json → classify from that, as if we had watched it end;
  - it is gone without a word       → failed "worker lost" (cancelled if a cancel was pending),
    with a reason that says what resume will do.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import immediate_transaction
from app.jobs.service import transition
from app.jobs.status import ACTIVE, JobStatus
from app.models import Job
from app.scheduler.classify import classify_exit, read_outcome
from app.scheduler.launcher import ExitInfo, Launcher, WorkerHandle
from app.scheduler.placement import parse_assigned
from app.scheduler.supervisor import Supervisor, store_unsent_events
from app.scheduler.tail import read_tail
from contract.rundir import RunDir, last_complete_checkpoint

log = logging.getLogger(__name__)


def reconcile(
    session_factory: sessionmaker[Session], *, launcher: Launcher, supervisor: Supervisor
) -> Counter[str]:
    """Settle every active job of `launcher`; return how many were reattached / finished / lost / skipped."""
    with session_factory() as session:
        job_ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.status.in_([s.value for s in ACTIVE]), Job.launcher == launcher.name)
                .order_by(Job.id)
            )
        )
    counts: Counter[str] = Counter()
    for job_id in job_ids:
        try:
            counts[_reconcile_job(session_factory, job_id, launcher=launcher, supervisor=supervisor)] += 1
        except Exception:
            counts["error"] += 1
            log.exception("job %s: reconciliation failed; it stays as it is until the next start", job_id)
    if job_ids:
        log.info("reconciled %d active job(s): %s", len(job_ids), dict(counts))
    return counts


def _reconcile_job(
    session_factory: sessionmaker[Session], job_id: int, *, launcher: Launcher, supervisor: Supervisor
) -> str:
    with immediate_transaction(session_factory) as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status) not in ACTIVE:
            return "skipped"  # settled by someone else meanwhile
        handle = launcher.attach(job)
        if handle is not None:
            return _reattach(job, handle, supervisor)
        outcome = read_outcome(Path(job.run_dir)) if job.run_dir else None
        if outcome is not None:
            return _finish_from_outcome(session, job, outcome)
        return _mark_lost(session, job)


def _reattach(job: Job, handle: WorkerHandle, supervisor: Supervisor) -> str:
    job.pid = handle.pid  # may come from launcher.json when the pid never reached the database
    supervisor.adopt(handle, parse_assigned(job.assigned_gpus))
    return "reattached"


def _finish_from_outcome(session: Session, job: Job, outcome: dict[str, object]) -> str:
    """The worker ended while the app was down but left its own account: classify from it."""
    store_unsent_events(session, job, job.run_dir)
    tail = read_tail(RunDir(Path(job.run_dir or ".")).stderr)
    verdict = classify_exit(
        ExitInfo(),
        outcome=outcome,
        stderr_tail=tail,
        cancel_requested=job.status == JobStatus.CANCELLING,
        on_gpu=bool(parse_assigned(job.assigned_gpus)),
        config=job.config or {},
    )
    transition(session, job=job, to=verdict.status, reason=verdict.reason)
    if verdict.reason is None:
        job.failure_reason = None
    job.exit_code = verdict.exit_code
    job.stderr_tail = tail
    log.info("job %s: ended while the app was down: %s", job.id, verdict.reason or verdict.status.value)
    return "finished"


def _resume_hint(job: Job) -> str:
    checkpoint = last_complete_checkpoint(RunDir(Path(job.run_dir))) if job.run_dir else None
    if checkpoint is not None:
        return f"resume continues from its last complete checkpoint ({checkpoint.name})"
    return "resume starts it again (no complete checkpoint was saved)"


def _mark_lost(session: Session, job: Job) -> str:
    """The worker is gone and said nothing: fail it (or finish a pending cancel) with a plain reason."""
    store_unsent_events(session, job, job.run_dir)
    tail = read_tail(RunDir(Path(job.run_dir)).stderr) if job.run_dir else ""
    if job.status == JobStatus.CANCELLING:
        transition(
            session,
            job=job,
            to=JobStatus.CANCELLED,
            reason="cancelled; the process ended while the app was down",
        )
    elif job.status == JobStatus.STARTING and job.pid is None:
        reason = "worker lost: the app stopped before the training process was started; resume to start it"
        transition(session, job=job, to=JobStatus.FAILED, reason=reason)
    else:
        reason = f"worker lost: the process ended while the app was down; {_resume_hint(job)}"
        transition(session, job=job, to=JobStatus.FAILED, reason=reason)
    job.stderr_tail = tail or job.stderr_tail
    log.warning("job %s: %s", job.id, job.failure_reason)
    return "lost"
