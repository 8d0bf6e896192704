"""REST and SSE routes for comparing runs (under /api)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from app.compare import service
from app.compare.service import CompareError
from app.compare.stream import compare_event_stream
from app.deps import SessionDep, SettingsDep, get_session_factory
from app.models import Job

router = APIRouter(prefix="/api", tags=["compare"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def resolve_jobs(session: Session, *, ids: list[str] | None, group: str | None) -> list[Job]:
    """The jobs named by ?ids=1,2,3 (2 to 8 of them) or by ?group=ID (a sweep group's members)."""
    if group:
        return service.group_jobs(session, group)
    job_ids = service.parse_ids(ids)
    service.check_count(job_ids)
    return service.load_jobs(session, job_ids)


def _error(exc: CompareError) -> JSONResponse:
    content: dict[str, Any] = {"detail": exc.message}
    if exc.unknown_ids:
        content["unknown_ids"] = exc.unknown_ids
    return JSONResponse(content, status_code=exc.status_code)


@router.get("/compare")
def compare_runs(
    session: SessionDep,
    ids: Annotated[list[str] | None, Query(description="Job ids, comma-separated: 1,2,3 (2 to 8)")] = None,
    group: Annotated[str | None, Query(max_length=64, description="A sweep group id instead of ids")] = None,
    metrics: Annotated[str | None, Query(description="Metric keys, comma-separated; default: all")] = None,
    x: Annotated[str, Query(description="x axis: step, tokens_seen or epoch")] = "step",
    max_points: Annotated[int, Query(ge=2, le=100_000)] = service.DEFAULT_MAX_POINTS,
) -> Response:
    """Runs side by side: {"runs", "series": {metric: {job_id: [[x, y], ...]}}, "config_diff"}.

    400 for fewer than 2 or more than 8 ids, 404 naming the ids that do not exist.
    """
    try:
        jobs = resolve_jobs(session, ids=ids, group=group)
        keys = [k.strip() for k in (metrics or "").split(",") if k.strip()] or None
        answer = service.compare(session, jobs=jobs, metrics=keys, x=x, max_points=max_points)
    except CompareError as exc:
        return _error(exc)
    return JSONResponse(answer)


@router.get("/compare/stream", response_class=StreamingResponse)
def compare_stream(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    ids: Annotated[list[str] | None, Query()] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """SSE for a compare page: a `run` message per run that changed ({"job_id", "row"?, "series"?}), `end`."""
    try:
        job_ids = [job.id for job in resolve_jobs(session, ids=ids, group=group)]
    except CompareError as exc:
        return _error(exc)
    # the request's session ends before the stream starts (SessionDep's scope); each poll opens its own
    stream = compare_event_stream(
        request,
        factory=get_session_factory(request),
        settings=settings,
        job_ids=job_ids,
        last_event_id=last_event_id,
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
