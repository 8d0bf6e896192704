"""Job lifecycle operations. Services flush; the caller (the request dependency, or the scheduler's own
transaction) commits. Keyword-only arguments after the session."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.jobs.status import RESUMABLE, TERMINAL, JobStatus, TransitionError, check_transition
from app.models import Job, utcnow
from contract.config import ConfigError, JobConfig, config_to_dict, load_config_text, parse_config


class JobNotFound(LookupError):
    """No job with that id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist; list jobs with GET /api/jobs")
        self.job_id = job_id


# which timestamp column records arriving in each status
_STATUS_TIMESTAMP: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued_at",
    JobStatus.STARTING: "starting_at",
    JobStatus.RUNNING: "running_at",
    JobStatus.CANCELLING: "cancelling_at",
    JobStatus.SUCCEEDED: "finished_at",
    JobStatus.FAILED: "finished_at",
    JobStatus.CANCELLED: "finished_at",
}


def create_job(
    session: Session,
    *,
    config: JobConfig,
    config_text: str,
    parent_job_id: int | None = None,
    group_id: str | None = None,
) -> Job:
    """Add a queued job for a validated config."""
    from app.datasets.sources import SETTINGS_KEY, check_job_source  # a local dataset file jobs may read
    from app.jobs.model_check import check_job_model
    from app.settings import Settings

    check_job_source(session, config)
    from app.datasets.method_fit import check_method_fits_data

    check_method_fits_data(session, config)  # preference pairs with method sft, examples with dpo: now
    settings = session.info.get(SETTINGS_KEY)
    if isinstance(settings, Settings):
        check_job_model(settings, config)  # a hub id the Hub says does not exist: refused now, not 17 s later
    now = utcnow()
    job = Job(
        name=config.name,
        status=JobStatus.QUEUED.value,
        config_text=config_text,
        config=config_to_dict(config),
        model_name=config.model.name,
        priority=config.resources.priority,
        gpus_requested=config.resources.gpus,
        parent_job_id=parent_job_id,
        group_id=group_id,
        created_at=now,
        queued_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    return job


def submit_text(
    session: Session, *, text: str, filename: str = "config.yaml", parent_job_id: int | None = None
) -> Job:
    """Validate YAML/JSON config text and queue it; raises ConfigError (and creates nothing) when invalid."""
    config = load_config_text(text, filename=filename)
    return create_job(session, config=config, config_text=text, parent_job_id=parent_job_id)


MAX_JOB_ID = 2**31 - 1  # job.id is INTEGER: 32-bit signed on PostgreSQL


def get_job(session: Session, job_id: int) -> Job:
    """The job with this id; raises JobNotFound."""
    if not 0 < job_id <= MAX_JOB_ID:  # a bigger id cannot exist (and PostgreSQL would refuse the query)
        raise JobNotFound(job_id)
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, *, limit: int = 200, statuses: list[str] | None = None) -> list[Job]:
    """Jobs, newest first."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    return list(session.scalars(stmt))


def transition(session: Session, *, job: Job, to: JobStatus, reason: str | None = None) -> None:
    """Move `job` to status `to` if the lifecycle allows it, stamping the matching *_at column.

    The UPDATE is conditional on the status we read (compare-and-set): when another process (the
    scheduler, a cancel request) changed it meanwhile, this raises TransitionError instead of
    silently overwriting that decision.
    """
    current = JobStatus(job.status)
    nxt = check_transition(current, to)
    values: dict[str, Any] = {"status": nxt.value, _STATUS_TIMESTAMP[nxt]: utcnow(), "updated_at": utcnow()}
    if reason is not None:
        values["failure_reason"] = reason
    session.flush()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == current.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(job)
        raise TransitionError(
            f"job {job.id} changed from {current.value} to {job.status} meanwhile; reload and try again"
        )
    for column, value in values.items():
        # keep the in-memory object in step with the row, without scheduling a second UPDATE
        set_committed_value(job, column, value)


def cancel_job(session: Session, *, job: Job) -> Job:
    """Cancel a job: queued → cancelled; starting/running → cancelling (the scheduler stops the process)."""
    status = JobStatus(job.status)
    if status == JobStatus.CANCELLING:
        return job  # already on its way; a second click changes nothing
    if status in TERMINAL:
        raise TransitionError(f"job {job.id} already {status.value}; there is nothing to cancel")
    if status == JobStatus.QUEUED:
        transition(session, job=job, to=JobStatus.CANCELLED, reason="cancelled before it started")
    else:
        transition(session, job=job, to=JobStatus.CANCELLING)
    return job


def resume_job(session: Session, *, job: Job) -> Job:
    """Put a failed or cancelled job back in the queue; it restarts from its last complete checkpoint."""
    status = JobStatus(job.status)
    if status not in RESUMABLE:
        hint = "clone it to train again" if status == JobStatus.SUCCEEDED else "it has not stopped yet"
        raise TransitionError(f"job {job.id} is {status.value} and cannot be resumed; {hint}")
    transition(session, job=job, to=JobStatus.QUEUED)
    job.exit_code = None
    job.failure_reason = None
    job.finished_at = None
    job.cancelling_at = None
    job.heartbeat_at = None
    job.pid = None
    session.flush()
    return job


def clone_config(job: Job) -> str:
    """The config text for the "clone and edit" form (as submitted, or YAML of the stored config)."""
    if job.config_text and job.config_text.strip():
        return job.config_text
    return str(yaml.safe_dump(job.config, sort_keys=False))


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with dotted-path overrides applied ({"training.learning_rate": 1e-4})."""
    result = copy.deepcopy(config)
    problems: dict[str, str] = {}
    for path, value in overrides.items():
        parts = str(path).split(".")
        node: Any = result
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                node = None
                break
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            problems[str(path)] = "unknown field; use a dotted path such as training.learning_rate"
            continue
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return result


def clone_job(session: Session, *, job: Job, overrides: dict[str, Any] | None = None) -> Job:
    """Queue a copy of `job`'s config, with optional dotted overrides; the copy records its parent."""
    data = apply_overrides(job.config, overrides or {})
    config = parse_config(data)
    text = job.config_text if not overrides else yaml.safe_dump(config_to_dict(config), sort_keys=False)
    # a clone is a new experiment of its own, not a member of its parent's sweep group
    return create_job(session, config=config, config_text=text, parent_job_id=job.id)


def is_terminal(job: Job) -> bool:
    """True when the job has finished one way or another."""
    return JobStatus(job.status) in TERMINAL


def touch(job: Job, when: datetime | None = None) -> None:
    """Mark the job changed (list streams watch updated_at)."""
    job.updated_at = when or utcnow()
