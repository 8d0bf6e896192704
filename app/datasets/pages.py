"""Dataset pages: the list with an upload form, and one dataset with its preview (readable without JS).

htmx loads the preview after the page (it runs a tokenizer subprocess the first time); without
JavaScript the preview form reloads the page with ?show=1 and the preview is rendered in place.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.datasets import preview as previews
from app.datasets import service
from app.datasets.api import accept_upload, preview_request
from app.deps import SessionDep, SettingsDep, get_session_factory
from app.templating import render_block, templates
from contract.catalog import KNOWN_HUB_MODELS, PRESET_MODELS, PRESET_PREFIX
from contract.datasets import SUFFIXES

router = APIRouter(tags=["pages"], include_in_schema=False)


def filesize(value: int | None) -> str:
    """1536 → '1.5 KiB', 200 MiB → '200 MiB'; None → '—'."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f}".removesuffix(".0") + f" {unit}"
        size /= 1024
    return f"{size:.1f}".removesuffix(".0") + " GiB"


templates.env.filters["filesize"] = filesize


def _model_choices() -> list[str]:
    return [PRESET_PREFIX + m for m in PRESET_MODELS] + list(KNOWN_HUB_MODELS)


def _list_context(
    session: SessionDep, settings: SettingsDep, *, error: str | None = None, problems: Any = None
) -> dict[str, Any]:
    return {
        "datasets": service.list_summaries(session),
        "accept": ",".join(SUFFIXES),
        "max_upload_bytes": settings.max_upload_bytes,
        "error": error,
        "problems": problems,
    }


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Uploaded and generated datasets, and the upload form."""
    return templates.TemplateResponse(request, "datasets.html", _list_context(session, settings))


@router.post("/datasets", response_class=HTMLResponse)
async def upload_dataset_page(request: Request, settings: SettingsDep) -> Response:
    """Upload from the form: success → the dataset's page; problems → this page again, by line (422)."""
    # no request session here: one would be held for the whole upload (see accept_upload)
    try:
        dataset, created, problems = await accept_upload(request, settings)
    except HTTPException as exc:  # too large, not multipart, no file, busy, disk full
        with get_session_factory(request)() as session:
            context = _list_context(session, settings, error=str(exc.detail))
        return templates.TemplateResponse(
            request, "datasets.html", context, status_code=exc.status_code, headers=exc.headers
        )
    if problems is not None or dataset is None:
        detail = str(problems["detail"]) if problems else "the upload could not be stored; try again"
        with get_session_factory(request)() as session:
            context = _list_context(session, settings, error=detail, problems=problems)
        return templates.TemplateResponse(request, "datasets.html", context, status_code=422)
    note = "uploaded" if created else "existing"
    return RedirectResponse(f"/datasets/{dataset.id}?{note}=1", status_code=303)


def _preview_context(ref: str, model: str, max_seq_len: int) -> dict[str, Any]:
    query = urlencode({"model": model, "max_seq_len": max_seq_len})
    return {
        "ref": ref,
        "model": model,
        "max_seq_len": max_seq_len,
        "preview_url": f"/datasets/{ref}/partials/preview?{query}",
    }


async def _run_preview(
    request: Request, settings: SettingsDep, ref: str, model: str, max_seq_len: int
) -> dict[str, Any]:
    """{"preview": answer} or {"preview_error": message, "preview_problems": [...]}."""
    try:
        req = preview_request(get_session_factory(request), settings, ref, model, max_seq_len)
        return {"preview": await previews.preview(settings, req, previews.limiter(request.app.state))}
    except previews.PreviewError as exc:
        return {"preview_error": str(exc), "preview_problems": exc.problems}


@router.get("/datasets/{ref}", response_class=HTMLResponse)
async def dataset_page(
    request: Request,
    ref: str,
    settings: SettingsDep,
    model: str | None = None,
    max_seq_len: int | None = None,
    show: bool = False,
) -> Response:
    """One dataset: what it is, how to use it, and its preview through a model's chat template."""
    with get_session_factory(request)() as session:
        try:
            dataset = service.get_summary(session, ref)
        except service.DatasetNotFound as exc:
            html = templates.get_template("error.html").render(
                request=request, title="Dataset not found", message=f"{exc}."
            )
            return HTMLResponse(html, status_code=404)
    model = model or previews.default_model()
    max_seq_len = max_seq_len if max_seq_len is not None else previews.default_max_seq_len()
    context = _preview_context(dataset["id"], model, max_seq_len)
    note = next((n for n in ("uploaded", "existing") if n in request.query_params), None)
    if dataset["kind"] == "upload":
        dataset["intake"] = await anyio.to_thread.run_sync(service.read_intake, settings, dataset["id"])
    context.update(dataset=dataset, model_choices=_model_choices(), show=show, note=note)
    if show:
        context.update(await _run_preview(request, settings, dataset["id"], model, max_seq_len))
    return templates.TemplateResponse(request, "dataset_detail.html", context)


@router.get("/datasets/{ref}/partials/preview", response_class=HTMLResponse)
async def dataset_preview_fragment(
    request: Request,
    ref: str,
    settings: SettingsDep,
    model: str | None = None,
    max_seq_len: int | None = None,
) -> Response:
    """The preview block of the dataset page (htmx loads it after the page)."""
    model = model or previews.default_model()
    max_seq_len = max_seq_len if max_seq_len is not None else previews.default_max_seq_len()
    context = _preview_context(ref, model, max_seq_len)
    context.update(await _run_preview(request, settings, ref, model, max_seq_len))
    context.update(request=request, show=True)
    return HTMLResponse(render_block("dataset_detail.html", "preview", context))
