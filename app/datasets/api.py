"""REST routes for datasets (under /api): upload, list (uploads and presets), one, preview."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from app.datasets import preview as previews
from app.datasets import service
from app.datasets.upload import ReceivedUpload, receive_upload
from app.deps import SessionDep, SettingsDep, get_session_factory
from app.models import Dataset
from app.settings import Settings
from worker.catalog import PRESET_PREFIX
from worker.datasets.validate import DatasetError

router = APIRouter(prefix="/api", tags=["datasets"])

_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The same bytes were uploaded before: the existing dataset"},
    413: {"description": "The file is over settings.max_upload_bytes (nothing is kept)"},
    422: {"description": "Problems by line: {detail, problems: [{line, message}]} (nothing is stored)"},
}


async def accept_upload(
    request: Request, settings: Settings, session: Session
) -> tuple[ReceivedUpload, Dataset | None, bool, dict[str, Any] | None]:
    """Receive, check and store an upload: (upload, dataset, created, problems payload or None).

    The caller owns nothing on disk afterwards: the temp file is always removed here.
    """
    upload = await receive_upload(request, tmp_dir=settings.data_dir / "tmp", limit=settings.max_upload_bytes)
    staging: Path | None = None
    try:
        # checking and writing the file come first: the database (and SQLite's write lock) only after
        checked = await anyio.to_thread.run_sync(service.check_upload, upload)
        staging = await anyio.to_thread.run_sync(service.stage_files, settings, upload, checked)
        store = partial(
            service.store_upload,
            session,
            settings=settings,
            upload=upload,
            checked=checked,
            staging=staging,
            name=upload.fields.get("name", ""),
        )
        dataset, created = await anyio.to_thread.run_sync(store)
    except DatasetError as exc:
        return upload, None, False, service.problems_payload(exc, filename=upload.filename)
    finally:
        upload.discard()
        if staging is not None:  # not moved into place (cancelled in between): remove it
            shutil.rmtree(staging, ignore_errors=True)
    return upload, dataset, created, None


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
                            "description": ".jsonl/.json/.csv/.parquet",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": 200,
                            "description": "Display name (optional)",
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
async def upload_dataset(request: Request, settings: SettingsDep, session: SessionDep) -> JSONResponse:
    """Upload a .jsonl/.json/.csv/.parquet file (multipart field `file`, optional `name`); stored once."""
    _upload, dataset, created, problems = await accept_upload(request, settings, session)
    if problems is not None or dataset is None:
        return JSONResponse(problems, status_code=422)
    return JSONResponse(service.upload_summary(dataset), status_code=201 if created else 200)


@router.get("/datasets", response_model=list[service.DatasetSummary])
def list_datasets(session: SessionDep) -> list[dict[str, Any]]:
    """Uploaded datasets (newest first) and the generated presets; a job names one in dataset.source."""
    return service.list_summaries(session)


@router.get("/datasets/{ref}", response_model=service.DatasetSummary)
def get_dataset(ref: str, session: SessionDep) -> dict[str, Any]:
    """One dataset by id (or upload:<id>, preset:<name>)."""
    try:
        return service.get_summary(session, ref)
    except service.DatasetNotFound as exc:
        raise HTTPException(404, str(exc)) from None


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
