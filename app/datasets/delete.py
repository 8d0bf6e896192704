"""Deleting an uploaded dataset: its row and its directory DATA_DIR/datasets/<id>/ (the file and the cached
previews), behind a confirmation. Refused (409) while a job that has not finished trains on it; finished
runs keep their records (resuming or cloning them then needs the file uploaded again)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.datasets import service
from app.deps import SessionDep, SettingsDep
from app.jobs.status import TERMINAL
from app.models import Dataset, Job
from app.settings import Settings
from app.templating import templates
from contract.catalog import PRESET_PREFIX

router = APIRouter(include_in_schema=True)
CONFIRM = "delete"
_ID = re.compile(r"^[0-9a-f]{12,64}$")
_TERMINAL = tuple(s.value for s in TERMINAL)


class DatasetInUse(RuntimeError):
    """A job that has not finished trains on the dataset (409)."""


def _jobs_using(session: Session, source: str, *, active: bool) -> list[int]:
    uses = Job.config["dataset"]["source"].as_string() == source
    status = Job.status.not_in(_TERMINAL) if active else Job.status.in_(_TERMINAL)
    return list(session.scalars(select(Job.id).where(uses, status).order_by(Job.id).limit(20)))


def find_dataset(session: Session, ref: str) -> Dataset:
    """The uploaded dataset `ref` names; 400 for a preset, 404 for an unknown or malformed id."""
    if ref.startswith(PRESET_PREFIX):
        raise HTTPException(400, f"{ref} is a built-in preset; there is nothing stored to delete")
    dataset_id = ref.removeprefix(service.UPLOAD_PREFIX)
    if not _ID.match(dataset_id):
        raise HTTPException(
            404, f"there is no uploaded dataset {dataset_id[:80]!r}; GET /api/datasets lists them"
        )
    try:
        return service.get_upload(session, dataset_id)
    except service.DatasetNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def delete_dataset(
    session: Session, *, settings: Settings, dataset: Dataset, confirm: str | None
) -> dict[str, Any]:
    """Delete the row, then move the directory aside and remove it; returns what was removed."""
    if (confirm or "").strip().lower() != CONFIRM:
        raise HTTPException(
            400, f"deleting dataset {dataset.id} removes its file for good; send confirm={CONFIRM}"
        )
    source = service.UPLOAD_PREFIX + dataset.id
    active = _jobs_using(session, source, active=True)
    if active:
        raise DatasetInUse(
            f"job {active[0]} trains on dataset {dataset.id} and has not finished; "
            "cancel it or wait for it, then delete the dataset"
        )
    dataset_id = dataset.id
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.expunge(dataset)
    session.flush()
    removed: list[str] = []
    root = settings.datasets_dir
    folder = root / dataset_id
    if folder.is_dir() and not folder.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=service.STALE_PREFIX, dir=root))  # start-up clears leftovers
        try:
            folder.rename(aside / dataset_id)
        finally:
            shutil.rmtree(aside)
        removed.append(f"datasets/{dataset_id}")
    return {"deleted": dataset_id, "removed": removed}


@router.delete("/api/datasets/{ref}", tags=["datasets"])
def delete_dataset_api(
    ref: str, session: SessionDep, settings: SettingsDep, confirm: str | None = None
) -> dict[str, Any]:
    """Delete an uploaded dataset and its files; needs `?confirm=delete` (409 while an unfinished job
    trains on it)."""
    dataset = find_dataset(session, ref)
    try:
        return delete_dataset(session, settings=settings, dataset=dataset, confirm=confirm)
    except DatasetInUse as exc:
        raise HTTPException(409, str(exc)) from None


def _confirm_context(session: Session, dataset: Dataset) -> dict[str, Any]:
    source = service.UPLOAD_PREFIX + dataset.id
    used = int(
        session.scalar(
            select(func.count()).select_from(Job).where(Job.config["dataset"]["source"].as_string() == source)
        )
        or 0
    )
    active = _jobs_using(session, source, active=True)
    return {
        "dataset": service.upload_summary(dataset),
        "used_by": used,
        "blocked": f"Job {active[0]} trains on it and has not finished: cancel it or wait for it first."
        if active
        else None,
        "confirm_word": CONFIRM,
    }


@router.get("/datasets/{ref}/delete", response_class=HTMLResponse, include_in_schema=False)
def delete_dataset_confirm_page(request: Request, ref: str, session: SessionDep) -> Response:
    """What deleting the dataset removes, and the button (or why it cannot be deleted yet)."""
    dataset = find_dataset(session, ref)
    return templates.TemplateResponse(request, "dataset_delete.html", _confirm_context(session, dataset))


@router.post("/datasets/{ref}/delete", include_in_schema=False)
async def delete_dataset_page(
    request: Request, ref: str, session: SessionDep, settings: SettingsDep
) -> Response:
    """Delete from the confirmation page (its `confirm` field says "delete"), then back to the datasets."""
    dataset = find_dataset(session, ref)
    form = await request.form()
    confirm = form.get("confirm")
    try:
        delete_dataset(
            session, settings=settings, dataset=dataset, confirm=confirm if isinstance(confirm, str) else None
        )
    except (HTTPException, DatasetInUse) as exc:
        context = _confirm_context(session, dataset)
        context["error"] = exc.detail if isinstance(exc, HTTPException) else str(exc)
        status = exc.status_code if isinstance(exc, HTTPException) else 409
        return templates.TemplateResponse(request, "dataset_delete.html", context, status_code=status)
    return RedirectResponse("/datasets?deleted=" + dataset.id, status_code=303)
