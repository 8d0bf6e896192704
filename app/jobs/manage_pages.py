"""Run management from the pages: the name/notes/tags form, archive, and delete behind a confirmation page.

Every form is a plain POST (the cross-site refusal of app/auth covers them; no hidden token is needed), and
each answers with a redirect, or the page again with the problem shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.deps import JobDep, SessionDep, SettingsDep
from app.jobs import manage
from app.jobs.schemas import iso, job_summary
from app.jobs.status import TransitionError
from app.models import Job, JobEvent, MetricPoint, Task
from app.settings import Settings
from app.templating import templates

router = APIRouter(tags=["pages"], include_in_schema=False)


def manage_view(session: Session, job: Job, *, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the job page's name/notes/tags panel shows (`manage` in job_detail.html)."""
    return {
        "tags": manage.job_tags(session, [job.id])[job.id],
        "notes": job.notes or "",
        "archived_at": iso(job.archived_at),
        "errors": errors or {},
        "max_tags": manage.MAX_TAGS,
        "max_tag": manage.MAX_TAG,
    }


def _form_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _detail_with(
    request: Request,
    session: Session,
    job: Job,
    *,
    status: int,
    errors: dict[str, str] | None = None,
    message: str | None = None,
) -> HTMLResponse:
    from app.jobs.pages import _detail_context  # the page's own context, with the problem added

    context = _detail_context(session, job, message=message)
    context["manage"] = manage_view(session, job, errors=errors)
    return templates.TemplateResponse(request, "job_detail.html", context, status_code=status)


@router.post("/jobs/{job_id:int}/edit")
async def edit_job_page(request: Request, job: JobDep, session: SessionDep) -> Response:
    """Save the name, notes and tags from the job page's form."""
    form = await request.form()
    try:
        manage.update_job(
            session,
            job=job,
            name=_form_text(form.get("name")),
            notes=_form_text(form.get("notes")),
            tags=_form_text(form.get("tags")),
        )
    except manage.ManageError as exc:
        return _detail_with(request, session, job, status=422, errors=exc.problems)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/jobs/{job_id:int}/archive")
def archive_job_page(request: Request, job: JobDep, session: SessionDep) -> Response:
    """Archive a finished run: it leaves the default list, its files stay."""
    try:
        manage.archive_job(session, job=job, archived=True)
    except TransitionError as exc:
        return _detail_with(request, session, job, status=409, message=str(exc))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/jobs/{job_id:int}/unarchive")
def unarchive_job_page(job: JobDep, session: SessionDep) -> Response:
    """Bring an archived run back to the default list."""
    manage.archive_job(session, job=job, archived=False)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _dir_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under `path`, not following links."""
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += (Path(root) / name).lstat().st_size
                files += 1
            except OSError:
                continue
    return files, size


def _delete_context(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    run_dir, kept_reason = manage.owned_run_dir(settings, job)
    files, size = _dir_size(run_dir) if run_dir is not None and run_dir.is_dir() else (0, 0)
    try:
        manage.check_deletable(session, job=job)
        blocked = None
    except TransitionError as exc:
        blocked = str(exc)

    def count(model: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(model.job_id == job.id)) or 0)

    return {
        "job": job_summary(job),
        "blocked": blocked,
        "run_dir_name": run_dir.name if run_dir is not None and run_dir.is_dir() else None,
        "run_dir_kept": job.run_dir if kept_reason else None,
        "kept_reason": kept_reason,
        "files": files,
        "size_bytes": size,
        "metric_points": count(MetricPoint),
        "events": count(JobEvent),
        "tasks": count(Task),
        "confirm_word": manage.DELETE_CONFIRM,
    }


@router.get("/jobs/{job_id:int}/delete", response_class=HTMLResponse)
def delete_job_confirm_page(
    request: Request, job: JobDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """What deleting this run removes, and the button that does it (or why it cannot be deleted yet)."""
    context = _delete_context(session, settings, job)
    return templates.TemplateResponse(request, "job_delete.html", context)


@router.post("/jobs/{job_id:int}/delete")
async def delete_job_page(
    request: Request, job: JobDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Delete the run (the confirmation form's `confirm` field must say "delete"), then back to the list."""
    form = await request.form()
    try:
        manage.delete_job(session, settings=settings, job=job, confirm=_form_text(form.get("confirm")))
    except (manage.ManageError, TransitionError) as exc:
        context = _delete_context(session, settings, job)
        context["error"] = (
            next(iter(exc.problems.values())) if isinstance(exc, manage.ManageError) else str(exc)
        )
        status = 400 if isinstance(exc, manage.ManageError) else 409
        return templates.TemplateResponse(request, "job_delete.html", context, status_code=status)
    return RedirectResponse(f"/?deleted={job.id}", status_code=303)
