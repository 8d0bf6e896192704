"""REST routes for jobs (under /api). Thin: parse, call app.jobs.service, shape the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from app import artifacts
from app.auth.middleware import may_see_details
from app.db import DatabaseUnavailable, database_state
from app.deps import JobDep, SessionDep, SettingsDep
from app.http import read_body_limited
from app.jobs import service
from app.jobs.schemas import Created, JobDetail, JobSummary, config_request_body, job_detail, job_summary
from app.jobs.status import JobStatus
from contract.catalog import PRESET_DATASETS, PRESET_MODELS, PRESET_PREFIX
from contract.config import ConfigError, config_to_dict, demo_config, parse_config
from contract.estimate import estimate_memory

router = APIRouter(prefix="/api", tags=["jobs"])

_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


async def config_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw config body, at most settings.max_config_bytes (413 beyond)."""
    return await read_body_limited(request, settings.max_config_bytes, "the job config")


ConfigBody = Annotated[bytes, Depends(config_body)]


@router.post("/jobs", status_code=201, response_model=Created, openapi_extra=config_request_body())
def create_job(body: ConfigBody, request: Request, session: SessionDep) -> dict[str, Any]:
    """Queue a job. Body: the config as JSON (application/json) or YAML (application/yaml, text/yaml)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        text_body = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError({"": "the config is not UTF-8 text"}) from None
    if content_type in _YAML_TYPES:
        job = service.submit_text(session, text=text_body, filename="config.yaml")
    elif content_type == "application/json":
        try:
            data = json.loads(text_body) if text_body.strip() else {}
        except ValueError as exc:  # JSONDecodeError, or an integer with thousands of digits
            reason = "a number has thousands of digits" if "integer string conversion" in str(exc) else exc
            raise ConfigError({"": f"the body is not valid JSON: {reason}"}) from None
        except RecursionError:
            raise ConfigError({"": "the body is nested too deeply to be a job config"}) from None
        config = parse_config(data)
        job = service.create_job(session, config=config, config_text=text_body)
    else:
        raise HTTPException(
            415, f"unsupported content type {content_type!r}; send application/json or application/yaml"
        )
    return {"id": job.id, "status": job.status}


@router.post("/jobs/demo", status_code=201, response_model=Created)
def create_demo_job(session: SessionDep) -> dict[str, Any]:
    """Queue the one-click demo (tiny Gemma 3n, real 4-bit QLoRA, under a minute on CPU)."""
    import yaml

    config = demo_config()
    text_config = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    job = service.create_job(session, config=config, config_text=text_config)
    return {"id": job.id, "status": job.status}


# hidden from /docs as it was when the pages module served it: the new-job form's estimate panel uses it
@router.post("/estimate", include_in_schema=False)
async def estimate_api(request: Request) -> Response:
    """Memory estimate for a JSON config: {"total_gb", "breakdown", "notes"} (422 with the problems)."""
    settings = request.app.state.settings
    body = await read_body_limited(request, settings.max_config_bytes, "the job config")
    try:
        # a config near the cap takes a while to parse: in a thread, so other requests are not held up
        data = await anyio.to_thread.run_sync(json.loads, body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
        return JSONResponse(
            {"detail": "invalid job config", "problems": {"": "the body is not valid JSON; send the config"}},
            status_code=422,
        )
    config = await anyio.to_thread.run_sync(parse_config, data)  # ConfigError → 422 (the app's handler)
    return JSONResponse(estimate_memory(config).as_dict())


@router.get("/jobs", response_model=list[JobSummary])
def list_jobs(session: SessionDep, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Jobs, newest first; `status` filters by a comma-separated list of statuses."""
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    if statuses:
        unknown = [s for s in statuses if s not in {v.value for v in JobStatus}]
        if unknown:
            allowed = ", ".join(v.value for v in JobStatus)
            raise HTTPException(422, f"unknown status {unknown[0]!r}; use one of {allowed}")
    limit = max(1, min(limit, 1000))
    return [job_summary(j) for j in service.list_jobs(session, limit=limit, statuses=statuses)]


@router.get("/jobs/{job_id}", response_model=JobDetail)
def get_job(job: JobDep) -> dict[str, Any]:
    """One job: its summary, config and stderr tail."""
    return job_detail(job, stderr_tail=artifacts.stderr_tail(job.run_dir))


@router.post("/jobs/{job_id}/cancel", response_model=JobSummary)
def cancel_job(job: JobDep, session: SessionDep) -> dict[str, Any]:
    """Cancel: a queued job stops at once; a running one saves a checkpoint and stops (409 if finished)."""
    service.cancel_job(session, job=job)
    return job_summary(job)


@router.post("/jobs/{job_id}/resume", response_model=JobSummary)
def resume_job(job: JobDep, session: SessionDep) -> dict[str, Any]:
    """Queue a failed or cancelled job again, to continue from its last complete checkpoint (else 409)."""
    service.resume_job(session, job=job)
    return job_summary(job)


@router.post("/jobs/{job_id}/clone", status_code=201, response_model=Created)
def clone_job(job: JobDep, session: SessionDep, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Queue a copy of this job, optionally with dotted overrides: {"training.learning_rate": 1e-4}."""
    clone = service.clone_job(session, job=job, overrides=overrides or {})
    return {"id": clone.id, "status": clone.status}


@router.get("/jobs/{job_id}/logs")
def job_logs(job: JobDep, lines: int = 200) -> dict[str, Any]:
    """The tail of the worker's stderr (RUN_DIR/stderr.log)."""
    lines = max(1, min(lines, 5000))
    tail = artifacts.stderr_tail(job.run_dir, max_lines=lines)
    return {"stderr_tail": tail if tail is not None else (job.stderr_tail or "")}


@router.get("/jobs/{job_id}/adapter", response_class=FileResponse)
def download_adapter(job: JobDep, settings: SettingsDep) -> FileResponse:
    """The trained LoRA adapter as a zip (404 with a reason until it exists)."""
    try:
        source = artifacts.adapter_dir(job.run_dir, job.adapter_path)
        tmp_dir = settings.data_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        archive = artifacts.zip_directory(source, tmp_dir)
    except artifacts.ArtifactMissing as exc:
        raise HTTPException(404, f"job {job.id}: {exc}") from None
    except artifacts.ArtifactError as exc:
        raise HTTPException(409, f"job {job.id}: {exc}") from None
    filename = f"tuneboard-job-{job.id}-adapter.zip"
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=filename,
        background=BackgroundTask(Path(archive).unlink, missing_ok=True),
    )


@router.get("/health")
def health(request: Request, session: SessionDep) -> dict[str, Any]:
    """Is the app up, the database reachable, the scheduler running?"""
    db_state = database_state(session)
    if db_state != "ok":
        raise DatabaseUnavailable(db_state)  # 503 (app.main): monitors act on the code, not on the body
    scheduler = getattr(request.app.state, "scheduler", None)
    snapshot: dict[str, Any] = scheduler.snapshot() if scheduler is not None else {"enabled": False}
    if not may_see_details(request):
        # anonymous monitors learn that it works and how busy it is, not which jobs or processes run
        jobs = snapshot.get("jobs")
        snapshot = {key: snapshot[key] for key in ("enabled", "running", "role") if key in snapshot} | (
            {"jobs": len(jobs)} if isinstance(jobs, list) else {}
        )
    return {"ok": True, "db": "ok", "scheduler": snapshot}


@router.get("/presets")
def presets() -> dict[str, Any]:
    """The demo config and the preset models and datasets the worker can build without a download."""
    return {
        "demo": config_to_dict(demo_config()),
        "models": [
            {"name": PRESET_PREFIX + m.name, "description": m.description, "max_seq_len": m.max_seq_len}
            for m in PRESET_MODELS.values()
        ],
        "datasets": [
            {"name": PRESET_PREFIX + d.name, "description": d.description, "format": d.format}
            for d in PRESET_DATASETS.values()
        ],
    }
