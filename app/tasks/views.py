"""What the detail page's "Take it away" and "Try the adapter" panels show for one job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import object_session

from app import artifacts
from app.models import Job
from app.tasks.exports import exports_context
from app.tasks.manager import active_task
from app.tasks.merge_status import merge_status
from contract.config import ConfigError, stored_config
from contract.tasks import merge_refusal


def quantization_method(job: Job) -> str:
    """The job's quantization.method ("nf4" when the stored config predates the field)."""
    try:
        return stored_config(job.config).quantization.method
    except ConfigError:
        return "nf4"  # unreadable: refuse the merge as for a quantized run rather than guess "none"


def has_adapter(job: Job) -> bool:
    """Whether the job's adapter directory exists."""
    try:
        artifacts.adapter_dir(job.run_dir, job.adapter_path)
    except artifacts.ArtifactError:
        return False
    return True


def can_try(job: Job) -> bool:
    """The prompt box is offered for succeeded jobs whose adapter is on disk."""
    return job.status == "succeeded" and has_adapter(job)


def job_merge_status(job: Job, *, active: bool | None = None) -> dict[str, Any]:
    """merge_status of the job's run, judged by whether the scheduler holds an export task for it."""
    run_dir = Path(job.run_dir) if job.run_dir else None
    session = object_session(job)
    if active is None and session is not None:
        active = active_task(session, job.id, "merge") is not None
    return merge_status(run_dir, active=active)


def takeaway_context(job: Job, *, merge_active: bool | None = None) -> dict[str, Any]:
    """Template context for partials/takeaway.html (`merge_active`: known to hold an export task)."""
    checkpoints = artifacts.list_checkpoints(job.run_dir)
    return {
        "job_id": job.id,
        "status": job.status,
        "has_adapter": has_adapter(job),
        "can_try": can_try(job),
        "checkpoints": [c for c in checkpoints if c["complete"]],
        "incomplete_checkpoints": [c for c in checkpoints if not c["complete"]],
        "merge": job_merge_status(job, active=merge_active),
        "merge_refusal": merge_refusal(quantization_method(job)),
        **exports_context(job, object_session(job)),
    }
