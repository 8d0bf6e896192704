"""REST routes for jobs (under /api). Thin: parse, call app.jobs.service, shape the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from app import artifacts
from app.auth.middleware import may_see_details
from app.auth.redact import redact_secrets
from app.db import DatabaseUnavailable, database_state
from app.deps import JobDep, SessionDep, SettingsDep
from app.http import read_body_limited
from app.jobs import listing, manage, service
from app.jobs.schemas import Created, JobDetail, JobSummary, config_request_body, iso, job_detail, job_summary
from app.models import Job
from contract.catalog import PRESET_DATASETS, PRESET_MODELS, PRESET_PREFIX
from contract.config import ConfigError, config_to_dict, demo_config, parse_config
from contract.estimate import estimate_memory
from contract.rundir import FULL_LOG_NAME

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


class JobListItem(JobSummary):
    """A job as GET /api/jobs lists it: the summary plus its tags, notes and when it was archived."""

    tags: list[str]
    notes: str
    archived_at: str | None


def list_item(job: Job, tags: list[str]) -> dict[str, Any]:
    """The summary of `job` with its run-management fields."""
    return job_summary(job) | {"tags": tags, "notes": job.notes or "", "archived_at": iso(job.archived_at)}


@router.get("/jobs", response_model=list[JobListItem])
def list_jobs(
    request: Request,
    response: Response,
    session: SessionDep,
    q: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    tag: str | None = None,
    model: str | None = None,
    method: str | None = None,
    created_from: Annotated[str | None, Query(alias="from")] = None,
    created_to: Annotated[str | None, Query(alias="to")] = None,
    sort: str = "newest",
    archived: str = "hide",
    offset: int = 0,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Jobs, newest first. `q` searches names and models (substring) and tags, and takes `status:`, `tag:`,
    `model:`, `method:` words; `status` (comma-separated or repeated), `tag`, `model` (exact), `method`
    (sft/dpo/orpo/kto), `from`/`to` (YYYY-MM-DD, UTC) filter; `sort` is newest, oldest, name, status or loss;
    `archived` is hide (default), only or all. The X-Total-Count header says how many match in all."""
    try:
        query = listing.parse_list_query(request.query_params, request.query_params.getlist("status"))
    except listing.ListQueryError as exc:
        raise HTTPException(422, str(exc)) from None
    jobs, total = listing.list_page(session, query)
    response.headers["X-Total-Count"] = str(total)
    tags = manage.job_tags(session, [j.id for j in jobs])
    return [list_item(j, tags[j.id]) for j in jobs]


class JobChanges(BaseModel):
    """Fields of a run to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, max_length=2000, description="The display name (the config keeps its own)."
    )
    notes: str | None = Field(None, max_length=20_000, description="Free notes, at most 10,000 characters.")
    tags: list[str] | None = Field(
        None, max_length=64, description="Replaces the tags: at most 16, each 1-32 of a-z 0-9 . _ : + -."
    )


@router.patch("/jobs/{job_id}", response_model=JobListItem)
def update_job(job: JobDep, session: SessionDep, changes: JobChanges) -> dict[str, Any]:
    """Rename a run, set its notes or replace its tags (422 names the field that is wrong)."""
    try:
        tags = manage.update_job(session, job=job, name=changes.name, notes=changes.notes, tags=changes.tags)
    except manage.ManageError as exc:
        raise HTTPException(422, str(exc)) from None
    return list_item(job, tags)


@router.post("/jobs/{job_id}/archive", response_model=JobListItem)
def archive_job(job: JobDep, session: SessionDep) -> dict[str, Any]:
    """Hide a finished run from the default list; its files stay (409 while it runs)."""
    manage.archive_job(session, job=job, archived=True)
    return list_item(job, manage.job_tags(session, [job.id])[job.id])


@router.post("/jobs/{job_id}/unarchive", response_model=JobListItem)
def unarchive_job(job: JobDep, session: SessionDep) -> dict[str, Any]:
    """Show an archived run in the default list again."""
    manage.archive_job(session, job=job, archived=False)
    return list_item(job, manage.job_tags(session, [job.id])[job.id])


@router.delete("/jobs/{job_id}")
def delete_job(
    job: JobDep, session: SessionDep, settings: SettingsDep, confirm: str | None = None
) -> dict[str, Any]:
    """Delete a stopped run with its metrics, events, tasks and run directory; needs `?confirm=delete`.
    409 while it (or a task on it) runs: cancel it first. `kept` lists files it would not remove."""
    try:
        outcome = manage.delete_job(session, settings=settings, job=job, confirm=confirm)
    except manage.ManageError as exc:
        raise HTTPException(400, str(exc)) from None
    return outcome.as_dict()


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
    """The tails of the run's logs: `log_tail` is RUN_DIR/train.log (every message, library warnings and
    tracebacks; null before the run writes it), `stderr_tail` the process's raw stdout and stderr."""
    lines = max(1, min(lines, 5000))
    tail = artifacts.stderr_tail(job.run_dir, max_lines=lines)
    return {
        "log_tail": artifacts.full_log_tail(job.run_dir, max_lines=lines),
        "stderr_tail": tail if tail is not None else (job.stderr_tail or ""),
    }


FULL_LOG_MAX_BYTES = 16 * 1024 * 1024


@router.get("/jobs/{job_id}/train.log", response_class=PlainTextResponse)
def download_full_log(job: JobDep) -> Response:
    """The run's whole log (RUN_DIR/train.log) as a download, secrets redacted; 404 before it exists."""
    try:
        path = artifacts.contained_path(Path(job.run_dir or ""), FULL_LOG_NAME) if job.run_dir else None
    except artifacts.ArtifactError as exc:
        raise HTTPException(404, str(exc)) from exc
    if path is None or not path.is_file():
        raise HTTPException(404, "this run has no log yet: it is written once the training process starts")
    with path.open("rb") as fh:  # the worker writes this file: never more than FULL_LOG_MAX_BYTES in memory
        size = fh.seek(0, 2)
        fh.seek(max(0, size - FULL_LOG_MAX_BYTES))
        text = fh.read(FULL_LOG_MAX_BYTES).decode("utf-8", errors="replace")
    if size > FULL_LOG_MAX_BYTES:
        text = f"(the first {size - FULL_LOG_MAX_BYTES} bytes are left out)\n" + text.split("\n", 1)[-1]
    text = redact_secrets(text) or ""
    headers = {"Content-Disposition": f'attachment; filename="job-{job.id}-train.log"'}
    return PlainTextResponse(text, headers=headers)


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
