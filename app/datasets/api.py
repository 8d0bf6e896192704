"""REST routes for datasets (under /api): upload, list (uploads and presets), one, preview."""

from __future__ import annotations

import shutil
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from app.datasets import intake, service
from app.datasets import preview as previews
from app.datasets.upload import disk_full, is_disk_full, receive_upload
from app.deps import SessionDep, SettingsDep, get_session, get_session_factory
from app.models import Dataset
from app.settings import Settings
from contract.catalog import PRESET_PREFIX
from contract.datasets import DatasetError

router = APIRouter(prefix="/api", tags=["datasets"])

# the request dependency's session (same pool gate, write lock, one commit), taken only when needed
request_session = asynccontextmanager(get_session)

_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The same bytes were uploaded before: the existing dataset"},
    413: {"description": "The file is over settings.max_upload_bytes (nothing is kept)"},
    422: {
        "description": "Problems by line and grouped by kind: {detail, problems: [{line, message, kind}], "
        "groups: [{kind, count, first_lines, example}], total} (nothing is stored)"
    },
    503: {"description": "Every check slot stayed busy (settings.dataset_check_queue_s); see Retry-After"},
    507: {"description": "The server's disk is full (nothing is kept)"},
}


async def accept_upload(
    request: Request, settings: Settings
) -> tuple[Dataset | None, bool, dict[str, Any] | None]:
    """Receive, check and store an upload: (dataset, created, problems payload or None).

    No request session is held while the bytes arrive or are checked (that can take seconds, and the
    sessions are a small shared pool): only the short insert at the end takes one. Nothing stays on disk
    unless the dataset was stored. UploadRefused for 413/415/503/507 and a client that left.
    """
    upload = await receive_upload(
        request, tmp_dir=service.upload_tmp_dir(settings), limit=settings.max_upload_bytes
    )
    staging: Path | None = None
    try:
        staging = await anyio.to_thread.run_sync(service.new_staging_dir, settings)
        checked = await intake.check_and_stage(request, settings, upload, staging)
        store = partial(
            service.store_upload,
            settings=settings,
            upload=upload,
            checked=checked,
            staging=staging,
            name=upload.fields.get("name", ""),
        )
        async with request_session(request) as session:
            dataset, created = await anyio.to_thread.run_sync(store, session)
    except DatasetError as exc:
        return None, False, service.problems_payload(exc, filename=upload.filename)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full() from None
        raise
    finally:
        upload.discard()
        if staging is not None:  # not moved into place (refused, or cancelled in between): remove it
            shutil.rmtree(staging, ignore_errors=True)
    return dataset, created, None


# the body is parsed by hand (streamed with a cap), so its shape is declared here for /docs
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".jsonl/.json/.csv/.parquet/.txt",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": 200,
                            "description": "Display name (optional)",
                        },
                        "columns": {
                            "type": "string",
                            "maxLength": 4096,
                            "description": "dataset.columns mapping as JSON/YAML, or a LLaMA-Factory "
                            "dataset_info.json entry (optional)",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/datasets",
    status_code=201,
    response_model=service.DatasetSummary,
    responses=_UPLOAD_RESPONSES,
    openapi_extra=_UPLOAD_BODY,
)
async def upload_dataset(request: Request, settings: SettingsDep) -> JSONResponse:
    """Upload a .jsonl/.json/.csv/.parquet/.txt file (multipart field `file`, optional `name` and `columns`);
    stored once. The answer's `intake` names the detected layout, the conversion, the columns used, ignored
    and held back (with what happens to them)."""
    dataset, created, problems = await accept_upload(request, settings)
    if problems is not None or dataset is None:
        return JSONResponse(problems, status_code=422)
    answer = service.upload_summary(dataset)
    answer["intake"] = await anyio.to_thread.run_sync(service.read_intake, settings, dataset.id)
    return JSONResponse(answer, status_code=201 if created else 200)


@router.get("/datasets", response_model=list[service.DatasetSummary])
def list_datasets(session: SessionDep) -> list[dict[str, Any]]:
    """Uploaded datasets (newest first) and the generated presets; a job names one in dataset.source."""
    return service.list_summaries(session)


@router.get("/datasets/{ref}", response_model=service.DatasetSummary)
def get_dataset(ref: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """One dataset by id (or upload:<id>, preset:<name>), with what was understood of an upload (intake)."""
    try:
        summary = service.get_summary(session, ref)
    except service.DatasetNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if summary["kind"] == "upload":
        summary["intake"] = service.read_intake(settings, summary["id"])
    return summary


def preview_request(
    factory: sessionmaker[Session], settings: Settings, ref: str, model: str, max_seq_len: int
) -> previews.PreviewRequest:
    """What to inspect for `ref` (PreviewError 404/410 when the dataset or its file is missing)."""
    previews.check_params(model, max_seq_len)
    if ref.startswith(PRESET_PREFIX):
        with factory() as session:
            try:
                service.get_summary(session, ref)
            except service.DatasetNotFound as exc:
                raise previews.PreviewError(404, str(exc)) from None
        return previews.PreviewRequest(ref, previews.preset_cache_dir(settings, ref), model, max_seq_len)
    with factory() as session:  # a short session: none is held while the subprocess runs
        try:
            dataset_id = service.get_upload(session, ref).id
        except service.DatasetNotFound as exc:
            raise previews.PreviewError(404, str(exc)) from None
    path = service.data_file(settings, dataset_id)
    if not path.is_file():
        raise previews.PreviewError(410, f"the stored file of dataset {dataset_id} is gone; upload it again")
    return previews.PreviewRequest(str(path), path.parent, model, max_seq_len)


@router.get("/datasets/{ref}/preview")
async def preview_dataset(
    ref: str,
    request: Request,
    settings: SettingsDep,
    model: str | None = None,
    max_seq_len: int | None = None,
) -> JSONResponse:
    """The first rows through the model's chat template and a token-length histogram (cached)."""
    try:
        req = preview_request(
            get_session_factory(request),
            settings,
            ref,
            model or previews.default_model(),
            max_seq_len if max_seq_len is not None else previews.default_max_seq_len(),
        )
        answer = await previews.preview(settings, req, previews.limiter(request.app.state))
    except previews.PreviewError as exc:
        return JSONResponse({"detail": str(exc), "problems": exc.problems}, status_code=exc.status)
    return JSONResponse(answer)
