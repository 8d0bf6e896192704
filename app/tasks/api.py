"""Routes to take a run away: checkpoint and merged-model zips, metric exports, merged export, try it."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import asdict
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
from app.settings import Settings
from app.tasks.exports_api import router as exports_router
from app.tasks.manager import TaskBusy, TaskManager, get_task_manager, task_config
from app.tasks.try_stream import TRY_FIELDS, Decoding, TryInputError, parse_try_request
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
router.include_router(
    exports_router
)  # exports: merged (also 4-bit), GGUF, GGUF LoRA (app/tasks/exports_api.py)
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


async def _try_stream(
    lines: AsyncGenerator[dict[str, Any] | None, None], decoding: Decoding
) -> AsyncIterator[str]:
    """The generation task's JSON lines as SSE: `decoding` {max_new_tokens, temperature, top_p, seed},
    `stage` {stage} while waiting, `token` {side, token}, then `done` or `error` {detail}."""
    try:
        yield ": generating\n\n"  # headers and a first byte at once: the browser knows it started
        yield _sse("decoding", {k: v for k, v in asdict(decoding).items() if k != "raw"})
        async for message in lines:
            if message is None:
                yield ": ping\n\n"
            elif "token" in message:
                yield _sse("token", {"side": message.get("side"), "token": message["token"]})
            elif "stage" in message:
                yield _sse("stage", {"stage": str(message["stage"])})
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


async def _start_try(
    job: Job, manager: TaskManager, settings: Settings, values: Mapping[str, Any]
) -> StreamingResponse:
    """Check the try's parameters (422) and the job (409), queue the generation and stream its answer."""
    try:
        prompt, history, decoding = parse_try_request(
            values,
            max_prompt_chars=settings.try_max_prompt_chars,
            max_new_tokens_cap=settings.try_max_new_tokens,
        )
    except TryInputError as exc:
        raise HTTPException(422, str(exc)) from None
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
        claim, Path(job.run_dir), config=config, prompt=prompt, decoding=decoding, history=history
    )
    return StreamingResponse(
        _try_stream(lines, decoding), media_type="text/event-stream", headers=_SSE_HEADERS
    )


_TRY_DOC = (
    "SSE: the answer with the adapter, then with the base alone, token by token (succeeded jobs only). "
    "temperature 0 (default) decodes greedily; above 0 (up to 2) it samples with top_p in (0, 1], and both "
    "sides start from `seed` (random when left out; the `decoding` event says which). `history` is the "
    "conversation so far: a JSON list of {role: user|assistant, content}, alternating from user to the "
    "assistant's answer; the new prompt is the next user turn, and both sides continue the same history. "
    "Its contents and the prompt count together against TUNEBOARD_TRY_MAX_PROMPT_CHARS."
)


@router.get("/api/jobs/{job_id}/try", description=_TRY_DOC)
async def try_adapter(
    job: JobDep,
    manager: ManagerDep,
    settings: SettingsDep,
    prompt: Annotated[str, Query(description="What to ask the model.")] = "",
    max_new_tokens: Annotated[str | None, Query(description="Answer length in tokens (default 64).")] = None,
    raw: Annotated[str | None, Query(description="true: send the prompt without the chat template.")] = None,
    temperature: Annotated[str | None, Query(description="0 (greedy, default) to 2.")] = None,
    top_p: Annotated[str | None, Query(description="Nucleus sampling mass in (0, 1]; default 1.")] = None,
    seed: Annotated[str | None, Query(description="Sampling seed, a whole number >= 0.")] = None,
    history: Annotated[str | None, Query(description="The conversation so far, as JSON.")] = None,
) -> Response:
    """Try the adapter (parameters in the query; POST the same as a JSON body for long conversations)."""
    values = {
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "raw": raw,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "history": history,
    }
    return await _start_try(job, manager, settings, values)


@router.post("/api/jobs/{job_id}/try", description=_TRY_DOC)
async def try_adapter_post(
    job: JobDep, manager: ManagerDep, settings: SettingsDep, request: Request
) -> Response:
    """Try the adapter with a JSON body {prompt, history, temperature, top_p, seed, max_new_tokens, raw}."""
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(422, f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object: {prompt, history, temperature, ...}")
    unknown = sorted(set(body) - TRY_FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown fields {unknown}; allowed: {sorted(TRY_FIELDS)}")
    return await _start_try(job, manager, settings, body)


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
