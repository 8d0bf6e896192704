"""What the API says about a job: the summary shown in lists, streams and detail pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from app.auth.redact import redact_data, redact_secrets
from app.jobs.status import TERMINAL, JobStatus
from app.models import Job


class JobSummary(BaseModel):
    """A job as the list page, the SSE streams and `GET /api/jobs` show it."""

    id: int
    name: str
    status: str
    model_name: str
    created_at: str | None
    queued_at: str | None
    starting_at: str | None
    running_at: str | None
    finished_at: str | None
    updated_at: str | None
    heartbeat_at: str | None
    last_step: int
    total_steps: int | None
    progress: float | None
    last_loss: float | None
    best_eval_loss: float | None
    tokens_per_second: float | None
    peak_vram_gb: float | None
    eta_seconds: float | None
    duration_seconds: float | None
    failure_reason: str | None
    exit_code: int | None
    assigned_gpus: str | None
    gpus_requested: int
    priority: int
    attempt: int
    parent_job_id: int | None
    group_id: str | None
    has_adapter: bool


class JobDetail(JobSummary):
    """A job with its config and the tail of its stderr (`GET /api/jobs/{id}`)."""

    config: dict[str, Any]
    config_text: str
    stderr_tail: str | None


class Created(BaseModel):
    """Answer to a job creation."""

    id: int
    status: str


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; every stored datetime is UTC, so say so."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with the UTC offset, or None."""
    aware = as_utc(value)
    return aware.isoformat() if aware is not None else None


def job_progress(job: Job) -> float | None:
    """Fraction of the steps done (0..1), or None while the total is unknown."""
    if job.status == JobStatus.SUCCEEDED:
        return 1.0
    if not job.total_steps:
        return None
    return max(0.0, min(1.0, (job.last_step or 0) / job.total_steps))


def job_duration(job: Job, now: datetime | None = None) -> float | None:
    """Seconds from the start to the finish, or to now while it runs; None before it starts."""
    start = as_utc(job.running_at) or as_utc(job.starting_at)
    if start is None:
        return None
    end = as_utc(job.finished_at)
    if end is None:
        if job.status in TERMINAL:
            return None
        end = now or datetime.now(UTC)
    return round(max(0.0, (end - start).total_seconds()), 1)


def job_summary(job: Job) -> dict[str, Any]:
    """The JSON-ready summary of `job` (datetimes as ISO strings)."""
    return {
        "id": job.id,
        "name": job.name or "",
        "status": job.status,
        "model_name": job.model_name or "",
        "created_at": iso(job.created_at),
        "queued_at": iso(job.queued_at),
        "starting_at": iso(job.starting_at),
        "running_at": iso(job.running_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "last_step": job.last_step or 0,
        "total_steps": job.total_steps,
        "progress": job_progress(job),
        "last_loss": job.last_loss,
        "best_eval_loss": job.best_eval_loss,
        "tokens_per_second": job.tokens_per_second,
        "peak_vram_gb": job.peak_vram_gb,
        "eta_seconds": job.eta_seconds,
        "duration_seconds": job_duration(job),
        "failure_reason": redact_secrets(job.failure_reason),
        "exit_code": job.exit_code,
        "assigned_gpus": job.assigned_gpus,
        "gpus_requested": job.gpus_requested or 0,
        "priority": job.priority or 0,
        "attempt": job.attempt or 0,
        "parent_job_id": job.parent_job_id,
        "group_id": job.group_id,
        "has_adapter": bool(job.adapter_path and job.run_dir),
    }


def job_detail(job: Job, *, stderr_tail: str | None = None) -> dict[str, Any]:
    """The summary plus the config and the stderr tail."""
    data = job_summary(job)
    # shown as submitted, minus anything that looks like a credential (app/auth/redact.py)
    data["config"] = redact_data(job.config)
    data["config_text"] = redact_secrets(job.config_text)
    data["stderr_tail"] = stderr_tail if stderr_tail is not None else redact_secrets(job.stderr_tail)
    return data


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local `#/$defs/X` references by their definitions (JobConfig has no recursive models)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def config_request_body() -> dict[str, Any]:
    """OpenAPI `requestBody` of routes that read a job config from the raw body (for /docs and fuzzing)."""
    from contract.config import JobConfig

    schema = JobConfig.model_json_schema()
    inlined = _inline_refs(schema, schema.get("$defs", {}))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inlined},
                "application/yaml": {"schema": {"type": "string", "description": "The config as YAML."}},
            },
        }
    }
