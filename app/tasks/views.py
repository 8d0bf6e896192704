"""What the detail page's "Take it away" and "Try the adapter" panels show for one job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app import artifacts
from app.models import Job
from app.tasks.manager import merge_status
from contract.tasks import merge_refusal


def quantization_method(job: Job) -> str:
    """The job's quantization.method ("nf4" when the stored config predates the field)."""
    config = job.config if isinstance(job.config, dict) else {}
    quant = config.get("quantization")
    method = quant.get("method") if isinstance(quant, dict) else None
    return str(method or "nf4")


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


def takeaway_context(job: Job) -> dict[str, Any]:
    """Template context for partials/takeaway.html."""
    checkpoints = artifacts.list_checkpoints(job.run_dir)
    run_dir = Path(job.run_dir) if job.run_dir else None
    return {
        "job_id": job.id,
        "status": job.status,
        "has_adapter": has_adapter(job),
        "can_try": can_try(job),
        "checkpoints": [c for c in checkpoints if c["complete"]],
        "incomplete_checkpoints": [c for c in checkpoints if not c["complete"]],
        "merge": merge_status(run_dir),
        "merge_refusal": merge_refusal(quantization_method(job)),
    }
