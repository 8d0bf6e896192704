"""Routes for exports: start one (API and page), follow it, cancel it, download its files with checksums.

Every route sits behind the app's AuthMiddleware like the other task routes; the page's POST goes through
the same cross-site checks as every form. Only files of an export that passed its parity check are
served, each with its size (Content-Length) and its sha256 (X-Checksum-Sha256, and in the listing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.deps import JobDep, SessionDep
from app.models import Job
from app.tasks.exports import (
    active_export,
    cancel_export,
    export_file,
    export_status,
    exports_context,
    job_exports,
    name_of_args,
    sha256_of,
    start_export,
)
from app.tasks.manager import TaskBusy, TaskManager, get_task_manager, task_config
from app.tasks.views import has_adapter
from app.templating import render_block
from contract.config import ConfigError
from contract.tasks import DEFAULT_QUANT, ExportRequestError, export_name, parse_export_name

router = APIRouter(tags=["exports"])
ManagerDep = Annotated[TaskManager, Depends(get_task_manager)]


class ExportRequest(BaseModel):
    """What to export: format merged | gguf | gguf-lora, its quantization, and which base to fold into."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["merged", "gguf", "gguf-lora"]
    quant: str | None = Field(None, max_length=16, description="gguf: f16, bf16, q8_0, q4_k_m")
    base: Literal["auto", "dequantized", "full"] = "auto"


def _active_name(session: Session, job: Job) -> str | None:
    task = active_export(session, job.id)
    return name_of_args(task.args) if task is not None else None


def _one(session: Session, job: Job, name: str) -> dict[str, Any]:
    try:
        parse_export_name(name)
    except ExportRequestError as exc:
        raise HTTPException(404, f"job {job.id}: {exc}") from None
    return export_status(job, name, active_name=_active_name(session, job))


async def _start(
    job: Job, manager: TaskManager, session: Session, req: ExportRequest
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 202 queued, 409 refused or busy, 422 unknown quantization."""
    if job.status != "succeeded" or not has_adapter(job) or job.run_dir is None:
        detail = (
            f"job {job.id} has no finished adapter (status {job.status}); exports need a job that succeeded"
        )
        return 409, {"detail": detail}
    quant = req.quant or DEFAULT_QUANT[req.format]
    try:
        export_name(req.format, quant)
    except ExportRequestError as exc:
        return 422, {"detail": str(exc)}
    try:
        config = task_config(job.config)
    except ConfigError as exc:
        return 409, {"detail": f"job {job.id}'s stored config no longer validates ({exc}); clone the job"}
    try:
        name = await start_export(
            manager, job, config=config, fmt=req.format, quant=quant, base=req.base, session=session
        )
    except TaskBusy as exc:
        return 409, {"detail": str(exc)}
    return 202, {**export_status(job, name, active_name=name, with_digests=False), "job_id": job.id}


@router.post("/api/jobs/{job_id}/exports", status_code=202)
async def create_export(
    job: JobDep, body: ExportRequest, manager: ManagerDep, session: SessionDep
) -> JSONResponse:
    """Queue an export (202); follow it with GET /api/jobs/{id}/exports/{name}."""
    status, payload = await _start(job, manager, session, body)
    return JSONResponse(payload, status_code=status)


@router.get("/api/jobs/{job_id}/exports")
def list_exports(job: JobDep, session: SessionDep) -> list[dict[str, Any]]:
    """Every export of the job: state, parity numbers, which base, and files with size and sha256."""
    return job_exports(job, session)


@router.get("/api/jobs/{job_id}/exports/{name}")
def get_export(job: JobDep, name: str, session: SessionDep) -> dict[str, Any]:
    """One export (none, starting, running, succeeded, failed) with its parity numbers and files."""
    return _one(session, job, name)


@router.post("/api/jobs/{job_id}/exports/{name}/cancel")
def cancel(job: JobDep, name: str, manager: ManagerDep, session: SessionDep) -> dict[str, Any]:
    """Stop the export `name` (409 when it is not running)."""
    _one(session, job, name)
    if not cancel_export(manager, session, job, name):
        raise HTTPException(409, f"job {job.id} is not running the export {name}")
    return {"job_id": job.id, "name": name, "cancelling": True}


@router.get("/api/jobs/{job_id}/exports/{name}/files/{filename}", response_class=FileResponse)
def download(job: JobDep, name: str, filename: str, session: SessionDep) -> FileResponse:
    """One file of an export that passed its parity check, with its size and sha256 in the headers."""
    state = _one(session, job, name)
    if state["state"] != "succeeded":
        raise HTTPException(404, f"job {job.id}: the export {name} is {state['state']}; nothing to download")
    path = export_file(Path(job.run_dir), name, filename) if job.run_dir else None
    if path is None:
        raise HTTPException(404, f"job {job.id}: the export {name} has no file {filename!r}")
    return FileResponse(
        path,
        filename=f"tuneboard-job-{job.id}-{name}-{path.name}",
        headers={"X-Checksum-Sha256": sha256_of(path)},
        media_type="application/octet-stream",
    )


# ------------------------------------------------------------------------------------------- page


def _fragment(request: Request, job: Job, session: Session, message: str | None = None) -> str:
    takeaway = {"job_id": job.id, "status": job.status, "has_adapter": has_adapter(job)}
    takeaway.update(exports_context(job, session))
    context = {"request": request, "takeaway": takeaway, "export_message": message}
    return render_block("partials/takeaway.html", "exports", context)


@router.get("/jobs/{job_id:int}/partials/exports", response_class=HTMLResponse, include_in_schema=False)
def exports_fragment(request: Request, job: JobDep, session: SessionDep) -> HTMLResponse:
    """The Exports box (htmx polls it while an export runs)."""
    return HTMLResponse(_fragment(request, job, session))


@router.post("/jobs/{job_id:int}/exports", include_in_schema=False)
async def export_page(
    request: Request,
    job: JobDep,
    manager: ManagerDep,
    session: SessionDep,
    format: Annotated[str, Form(max_length=16)],
    quant: Annotated[str, Form(max_length=16)] = "",
    base: Annotated[str, Form(max_length=16)] = "auto",
) -> Response:
    """The page's export button: htmx gets the updated box, a plain form post goes back to the page."""
    try:
        req = ExportRequest(format=format, quant=quant or None, base=base)  # type: ignore[arg-type]
    except ValueError as exc:
        return HTMLResponse(_fragment(request, job, session, f"not an export: {exc}"), status_code=422)
    status, body = await _start(job, manager, session, req)
    message = body.get("detail") if status >= 400 else None
    if request.headers.get("hx-request") == "true" or message:
        session.flush()
        return HTMLResponse(
            _fragment(request, job, session, message), status_code=200 if not message else status
        )
    return RedirectResponse(f"/jobs/{job.id}#exports", status_code=303)


@router.post("/jobs/{job_id:int}/exports/{name}/cancel", include_in_schema=False)
def cancel_page(
    request: Request, job: JobDep, name: str, manager: ManagerDep, session: SessionDep
) -> Response:
    """The page's cancel button."""
    _one(session, job, name)
    stopped = cancel_export(manager, session, job, name)
    message = None if stopped else f"the export {name} is not running"
    return HTMLResponse(_fragment(request, job, session, message))
