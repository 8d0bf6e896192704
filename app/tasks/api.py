"""Routes to take a run away: checkpoint and merged-model zips, metric exports, merged export, try it."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from sqlalchemy.orm import Session

from app import artifacts
from app.deps import JobDep, SessionDep, SettingsDep, get_session_factory
from app.models import Job
from app.tasks.manager import TaskBusy, TaskManager, get_task_manager, task_config
from app.tasks.views import (
    can_try,
    has_adapter,
    job_merge_status,
    quantization_method,
    takeaway_context,
)
from app.templating import render_block
from contract.config import ConfigError
from contract.tasks import merge_refusal

router = APIRouter(tags=["takeaway"])
ManagerDep = Annotated[TaskManager, Depends(get_task_manager)]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _zip_stream(source: Path, filename: str) -> StreamingResponse:
    """`source` as a zip streamed while it is built (links outside it are refused before anything is sent)."""
    members = artifacts.zip_members(source)
    return StreamingResponse(
        artifacts.stream_zip(members),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _artifact_http_error(job: Job, exc: artifacts.ArtifactError) -> HTTPException:
    status = 404 if isinstance(exc, artifacts.ArtifactMissing) else 409
    return HTTPException(status, f"job {job.id}: {exc}")


def _stored_task_config(job: Job) -> dict[str, Any]:
    """The job's config from the database, validated: the only thing a task may take its model from (409)."""
    try:
        return task_config(job.config)
    except ConfigError as exc:
        raise HTTPException(
            409, f"job {job.id}'s stored config no longer validates ({exc}); clone the job to fix it"
        ) from None


# ------------------------------------------------------------------------------------------- checkpoints


@router.get("/api/jobs/{job_id}/checkpoints")
def list_checkpoints(job: JobDep) -> list[dict[str, Any]]:
    """The job's complete checkpoints, oldest first: name, step, size and download URL."""
    return [
        {**c, "download_url": f"/api/jobs/{job.id}/checkpoints/{c['name']}.zip"}
        for c in artifacts.list_checkpoints(job.run_dir)
        if c["complete"]
    ]


@router.get("/api/jobs/{job_id}/checkpoints/{name}.zip", response_class=StreamingResponse)
def download_checkpoint(job: JobDep, name: str) -> StreamingResponse:
    """One complete checkpoint as a zip (404 unknown, 409 incomplete: its save never finished)."""
    try:
        source = artifacts.checkpoint_dir(job.run_dir, name)
        return _zip_stream(source, f"tuneboard-job-{job.id}-{name}.zip")
    except artifacts.ArtifactError as exc:
        raise _artifact_http_error(job, exc) from None


# ------------------------------------------------------------------------------------------- metrics


@router.get("/api/jobs/{job_id}/metrics.csv")
def metrics_csv(job: JobDep, request: Request) -> StreamingResponse:
    """Every stored metric point as CSV: `step` plus one column per key; nan/inf/-inf if non-finite."""
    return StreamingResponse(
        artifacts.metrics_csv(get_session_factory(request), job.id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="tuneboard-job-{job.id}-metrics.csv"'},
    )


@router.get("/api/jobs/{job_id}/metrics.json")
def metrics_json(job: JobDep, request: Request) -> StreamingResponse:
    """Every stored metric point as {"job_id", "series": {key: [[step, value], ...]}}, not downsampled."""
    return StreamingResponse(
        artifacts.metrics_json(get_session_factory(request), job.id),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="tuneboard-job-{job.id}-metrics.json"'},
    )


# ------------------------------------------------------------------------------------------- merged export


def _merge_view(job: Job, *, queued: bool = False) -> dict[str, Any]:
    # just queued by this request: its session's snapshot may predate the task's row
    status = job_merge_status(job, active=True if queued else None)
    url = f"/api/jobs/{job.id}/merged.zip" if status["state"] == "succeeded" else None
    return {"job_id": job.id, **status, "download_url": url}


def _merge_refused(job: Job) -> str | None:
    """Why this job cannot be exported now (None when it can)."""
    if job.status != "succeeded" or not has_adapter(job):
        return (
            f"job {job.id} has no finished adapter (status {job.status}); the merged export needs a job "
            "that succeeded"
        )
    refusal = merge_refusal(quantization_method(job))
    return f"job {job.id}: {refusal}" if refusal else None


async def _start_merge(job: Job, manager: TaskManager, session: Session) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 202 started, 200 already exported, 409 refused or busy."""
    refused = _merge_refused(job)
    if refused:
        return 409, {"detail": refused}
    assert job.run_dir is not None
    current = _merge_view(job)
    if current["state"] == "succeeded":
        return 200, current
    try:
        config = _stored_task_config(job)
    except HTTPException as exc:
        return exc.status_code, {"detail": exc.detail}
    try:
        # the request's session holds the write lock (BEGIN IMMEDIATE): the task's row goes in with it
        await manager.start_merge(job.id, Path(job.run_dir), config=config, session=session)
    except TaskBusy as exc:
        return 409, {"detail": str(exc)}
    return 202, _merge_view(job, queued=True)


@router.post("/api/jobs/{job_id}/export-merged", status_code=202)
async def export_merged(job: JobDep, manager: ManagerDep, session: SessionDep) -> JSONResponse:
    """Start merging the adapter into the base (non-quantized runs only): 202, then poll GET on this URL."""
    status, body = await _start_merge(job, manager, session)
    return JSONResponse(body, status_code=status)


@router.get("/api/jobs/{job_id}/export-merged")
def export_merged_status(job: JobDep) -> dict[str, Any]:
    """The merged export's state (none, starting, running, succeeded, failed), stage, progress and message."""
    return _merge_view(job)


@router.get("/api/jobs/{job_id}/merged.zip", response_class=StreamingResponse)
def download_merged(job: JobDep) -> StreamingResponse:
    """The merged model as a zip (404 with a reason until the export has finished)."""
    try:
        source = artifacts.merged_dir(job.run_dir)
        return _zip_stream(source, f"tuneboard-job-{job.id}-merged.zip")
    except artifacts.ArtifactError as exc:
        raise _artifact_http_error(job, exc) from None


# ------------------------------------------------------------------------------------------- try the adapter


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _try_stream(lines: AsyncGenerator[dict[str, Any] | None, None]) -> AsyncIterator[str]:
    """The generation task's JSON lines as SSE: `token` {side, token}, then `done` or `error` {detail}."""
    try:
        yield ": generating\n\n"  # headers and a first byte at once: the browser knows it started
        async for message in lines:
            if message is None:
                yield ": ping\n\n"
            elif "token" in message:
                yield _sse("token", {"side": message.get("side"), "token": message["token"]})
            elif message.get("done"):
                yield _sse("done", {})
                return
            elif "error" in message:
                yield _sse("error", {"detail": str(message["error"])})
                return
    finally:
        # a disconnected client cancels this generator: close the task's stream (kills the child) shielded
        with anyio.CancelScope(shield=True):
            await lines.aclose()


@router.get("/api/jobs/{job_id}/try")
async def try_adapter(
    job: JobDep,
    manager: ManagerDep,
    settings: SettingsDep,
    prompt: Annotated[str, Query(min_length=1, description="What to ask the model.")],
    max_new_tokens: Annotated[int, Query(ge=1, description="Answer length in tokens.")] = 64,
    raw: Annotated[bool, Query(description="Send the prompt without the chat template.")] = False,
) -> Response:
    """SSE: the answer with the adapter, then with the base alone, token by token (succeeded jobs only)."""
    if len(prompt) > settings.try_max_prompt_chars:
        raise HTTPException(
            422,
            f"the prompt has {len(prompt)} characters; at most {settings.try_max_prompt_chars} are allowed",
        )
    if max_new_tokens > settings.try_max_new_tokens:
        raise HTTPException(
            422,
            f"max_new_tokens is {max_new_tokens}; at most {settings.try_max_new_tokens} "
            "(TUNEBOARD_TRY_MAX_NEW_TOKENS) are allowed",
        )
    if not can_try(job):
        raise HTTPException(
            409, f"job {job.id} has no finished adapter (status {job.status}); try a job that succeeded"
        )
    assert job.run_dir is not None
    config = _stored_task_config(job)
    try:
        claim = manager.claim(job.id, "try", settings.try_timeout_s)
    except TaskBusy as exc:
        raise HTTPException(409, str(exc)) from None
    lines = manager.generation_lines(
        claim, Path(job.run_dir), config=config, prompt=prompt, max_new_tokens=max_new_tokens, raw=raw
    )
    return StreamingResponse(_try_stream(lines), media_type="text/event-stream", headers=_SSE_HEADERS)


# ------------------------------------------------------------------------------------------- page fragments


@router.get("/jobs/{job_id:int}/partials/takeaway", response_class=HTMLResponse, include_in_schema=False)
def takeaway_fragment(request: Request, job: JobDep) -> HTMLResponse:
    """The "Take it away" and "Try the adapter" panels (refreshed when the job finishes)."""
    context = {"request": request, "takeaway": takeaway_context(job)}
    return HTMLResponse(render_block("partials/takeaway.html", "takeaway", context))


@router.get("/jobs/{job_id:int}/partials/merge", response_class=HTMLResponse, include_in_schema=False)
def merge_fragment(request: Request, job: JobDep) -> HTMLResponse:
    """The merged-export box (htmx polls it while an export runs)."""
    context = {"request": request, "takeaway": takeaway_context(job)}
    return HTMLResponse(render_block("partials/takeaway.html", "merge", context))


@router.post("/jobs/{job_id:int}/export-merged", include_in_schema=False)
async def export_merged_page(
    request: Request, job: JobDep, manager: ManagerDep, session: SessionDep
) -> Response:
    """The page's export button: htmx gets the updated box, a plain form post is sent back to the page."""
    status, body = await _start_merge(job, manager, session)
    message = body.get("detail") if status == 409 else None
    if request.headers.get("hx-request") == "true":
        # a 202 just queued the export: this request's snapshot may not show its row yet
        takeaway = takeaway_context(job, merge_active=True if status == 202 else None)
        context = {"request": request, "takeaway": takeaway, "merge_message": message}
        return HTMLResponse(render_block("partials/takeaway.html", "merge", context))
    if message:
        return HTMLResponse(
            render_block(
                "partials/takeaway.html",
                "merge",
                {"request": request, "takeaway": takeaway_context(job), "merge_message": message},
            ),
            status_code=409,
        )
    return RedirectResponse(f"/jobs/{job.id}#takeaway", status_code=303)
