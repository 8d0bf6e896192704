"""REST and SSE routes for metrics and events: worker ingest, chart history, live streams."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.deps import JobDep, SeqCursor, SessionDep, SettingsDep, StepCursor, get_session_factory
from app.http import read_body_limited
from app.metrics import queries
from app.metrics.ingest import (
    IngestError,
    authorize,
    check_accepting,
    decode_batch,
    ingest_events,
    parse_batch,
)
from app.metrics.stream import job_event_stream, jobs_list_stream
from app.models import Job

router = APIRouter(prefix="/api", tags=["metrics"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# a generous per-event allowance for the byte cap of a batch (metric events are ~200 bytes)
_BYTES_PER_EVENT = 8192


def _csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def ingesting_job(
    job: JobDep, session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Job:
    """The path's job once the bearer token is its own (401/403) and its worker may still write (409)."""
    try:
        authorize(session, job=job, authorization=authorization)
        # the row, locked: a batch and the supervisor's final status never interleave (PostgreSQL; on
        # SQLite the request's write transaction already holds the lock)
        session.refresh(job, with_for_update=True)
        check_accepting(job)
    except IngestError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        raise HTTPException(exc.status_code, exc.detail, headers=headers) from None
    return job


IngestingJob = Annotated[Job, Depends(ingesting_job)]


async def events_body(request: Request, settings: SettingsDep, job: IngestingJob) -> bytes:
    """The raw ingest body, capped in bytes (413 beyond); read only after the token was accepted."""
    limit = settings.max_events_per_batch * _BYTES_PER_EVENT
    return await read_body_limited(request, limit, "the event batch")


EventsBody = Annotated[bytes, Depends(events_body)]


_EVENT_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["events"],
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["seq", "kind"],
                                "properties": {
                                    "seq": {"type": "integer", "minimum": 1},
                                    "kind": {"type": "string"},
                                    "step": {"type": "integer", "minimum": 0},
                                    "ts": {"type": "number"},
                                    "payload": {"type": "object"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}


@router.post("/jobs/{job_id}/events", openapi_extra=_EVENT_BATCH_BODY)
def ingest(body: EventsBody, job: IngestingJob, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Worker ingest: {"events": [{seq, kind, step, ts, payload}]} with the job's bearer token (409 once
    the job is finished: a finished job's history is not rewritten)."""
    try:
        try:
            data = decode_batch(body) if body.strip() else {"events": []}
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, 5000-digit ints, deep nesting
            raise IngestError(
                422, "invalid batch", {"events": f"the body is not valid JSON: {type(exc).__name__}: {exc}"}
            ) from None
        events = parse_batch(data, max_events=settings.max_events_per_batch)
        result = ingest_events(session, job=job, events=events)
    except IngestError as exc:
        content: dict[str, Any] = {"detail": exc.detail}
        if exc.problems:
            content["problems"] = exc.problems
        return JSONResponse(content, status_code=exc.status_code)
    return JSONResponse({"accepted": result.accepted, "last_seq": result.last_seq, "control": result.control})


@router.get("/jobs/{job_id}/metrics")
def job_metrics(
    job: JobDep,
    session: SessionDep,
    keys: str | None = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
    after_step: StepCursor = None,
    method: Annotated[str, Query(pattern="^(minmax|lttb)$")] = "minmax",
) -> dict[str, Any]:
    """Series per key ([[step, value_or_null], ...]), downsampled to max_points keeping spikes.

    `cursor` is where this history ends: open GET /stream?cursor=... to receive only what comes after.
    """
    series = queries.series(
        session, job_id=job.id, keys=_csv(keys), max_points=max_points, after_step=after_step, method=method
    )
    return {"job_id": job.id, "series": series, "cursor": queries.stream_cursor(session, job_id=job.id)}


@router.get("/jobs/{job_id}/metric-keys")
def job_metric_keys(job: JobDep, session: SessionDep) -> dict[str, Any]:
    """The metric keys this job has points for."""
    return {"job_id": job.id, "keys": queries.metric_keys(session, job_id=job.id)}


@router.get("/jobs/{job_id}/events")
def job_events(
    job: JobDep,
    session: SessionDep,
    kinds: str | None = None,
    after_seq: SeqCursor = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    """Non-metric events (status, log, checkpoint, guard, sample, ...) after `after_seq`."""
    return queries.events(session, job_id=job.id, kinds=_csv(kinds), after_seq=after_seq, limit=limit)


@router.get("/jobs/{job_id}/stream", response_class=StreamingResponse)
def job_stream(
    job: JobDep,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    cursor: str | None = None,
) -> StreamingResponse:
    """SSE: `job`, `metrics`, `events` messages as they change; `end` after a finished job's final state."""
    factory = get_session_factory(request)
    stream = job_event_stream(
        request, factory=factory, settings=settings, job_id=job.id, last_event_id=last_event_id or cursor
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


@router.get("/stream", response_class=StreamingResponse)
def jobs_stream(request: Request, settings: SettingsDep) -> StreamingResponse:
    """SSE for the jobs list: `jobs` messages with the summaries of jobs that changed."""
    factory = get_session_factory(request)
    return StreamingResponse(
        jobs_list_stream(request, factory=factory, settings=settings),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )
