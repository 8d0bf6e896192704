"""The jobs list page: the search and filter form, one page of runs, the pager.

Without JavaScript the form is a plain GET of `/`; static/js/jobs_list.js searches as you type by asking
for the `results` block only (header `X-Jobs-Partial: 1`) and swapping it in.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.jobs import listing, manage
from app.jobs.schemas import iso, job_summary
from app.jobs.status import JobStatus
from app.templating import render_block, templates

PARTIAL_HEADER = "x-jobs-partial"


def _pager(query: listing.ListQuery, total: int, shown: int) -> dict[str, Any]:
    newer = max(0, query.offset - query.limit) if query.offset else None
    older = query.offset + query.limit if query.offset + shown < total else None
    return {
        "first": query.offset + 1 if shown else 0,
        "last": query.offset + shown,
        "newer": "/?" + query.params(offset=newer) if newer is not None else None,
        "older": "/?" + query.params(offset=older) if older is not None else None,
    }


def list_context(session: Session, params: Any, statuses: list[str]) -> dict[str, Any]:
    """Everything jobs_list.html needs for these request parameters."""
    problems: dict[str, str] = {}
    try:
        query = listing.parse_list_query(params, statuses)
    except listing.ListQueryError as exc:
        problems = exc.problems
        query = listing.ListQuery()
    jobs, total = listing.list_page(session, query)
    tags = manage.job_tags(session, [j.id for j in jobs])
    rows = [job_summary(j) | {"tags": tags[j.id], "archived_at": iso(j.archived_at)} for j in jobs]
    return {
        "jobs": rows,
        "total": total,
        "query": query,
        "described": listing.describe(query),
        "problems": problems,
        "any_jobs": bool(rows) or listing.any_jobs(session),
        "pager": _pager(query, total, len(rows)),
        "max_id": max((j.id for j in jobs), default=0),
        "sorts": listing.SORTS,
        "statuses": [s.value for s in JobStatus],
        "methods": listing.METHODS,
        "models": listing.model_names(session),
        "all_tags": manage.all_tags(session),
    }


def render_jobs_list(request: Request, session: Session) -> Response:
    """The page, or its `results` block for jobs_list.js."""
    context = list_context(session, request.query_params, request.query_params.getlist("status"))
    deleted = request.query_params.get("deleted", "")
    context["deleted"] = deleted if deleted.isdigit() and len(deleted) < 12 else None
    status = 422 if context["problems"] else 200
    if request.headers.get(PARTIAL_HEADER) == "1":
        html = render_block("jobs_list.html", "results", {"request": request, **context})
        return HTMLResponse(html, status_code=status, headers={"Vary": "X-Jobs-Partial"})
    response = templates.TemplateResponse(request, "jobs_list.html", context, status_code=status)
    response.headers["Vary"] = "X-Jobs-Partial"
    return response
