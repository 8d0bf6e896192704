"""REST and SSE routes for metrics and events: worker ingest, chart history, live streams."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from app.deps import INT32_MAX, JobDep, SeqCursor, SessionDep, SettingsDep, StepCursor, get_session_factory
from app.http import read_body_limited
from app.jobs.service import JobNotFound, get_job
from app.metrics import queries
from app.metrics.hub import job_event_stream, jobs_list_stream
from app.metrics.ingest import (
    IngestError,
    ParsedEvent,
    authorize,
    check_accepting,
    decode_batch,
    parse_batch,
)
from app.metrics.writer import writer_for

router = APIRouter(prefix="/api", tags=["metrics"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# a generous per-event allowance for the byte cap of a batch (metric events are ~200 bytes)
_BYTES_PER_EVENT = 8192


def _csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _check_ingest(factory: sessionmaker[Session], job_id: int, authorization: str | None) -> None:
    """404 for an unknown job, 401/403 unless the bearer token is its own, 409 once it may not write.

    A short read-only session (no write lock): checked again by the writer inside its transaction.
    """
    with factory() as session:
        try:
            job = get_job(session, job_id)
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        try:
            authorize(session, job=job, authorization=authorization)
            check_accepting(job)
        except IngestError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
            raise HTTPException(exc.status_code, exc.detail, headers=headers) from None


def _parse(body: bytes, max_events: int) -> list[ParsedEvent]:
    try:
        data = decode_batch(body) if body.strip() else {"events": []}
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, 5000-digit ints, deep nesting
        raise IngestError(
            422, "invalid batch", {"events": f"the body is not valid JSON: {type(exc).__name__}: {exc}"}
        ) from None
    return parse_batch(data, max_events=max_events)


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
async def ingest(
    job_id: int,
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Worker ingest: {"events": [{seq, kind, step, ts, payload}]} with the job's bearer token (409 once
    the job is finished: a finished job's history is not rewritten).

    The token is checked before the body is read; the batch is then stored by the single ingest writer
    (app/metrics/writer.py), group-committed with other jobs' batches, and answered after its commit.
    """
    factory = get_session_factory(request)
    await anyio.to_thread.run_sync(_check_ingest, factory, job_id, authorization)
    body = await read_body_limited(
        request, settings.max_events_per_batch * _BYTES_PER_EVENT, "the event batch"
    )
    try:
        events = await anyio.to_thread.run_sync(_parse, body, settings.max_events_per_batch)
        result = await asyncio.wrap_future(writer_for(factory).submit(job_id, authorization, events))
    except IngestError as exc:
        content: dict[str, Any] = {"detail": exc.detail}
        if exc.problems:
            content["problems"] = exc.problems
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(content, status_code=exc.status_code, headers=headers)
    return JSONResponse({"accepted": result.accepted, "last_seq": result.last_seq, "control": result.control})


@router.get("/jobs/{job_id}/metrics")
def job_metrics(
    job: JobDep,
    session: SessionDep,
    keys: str | None = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
    after_step: StepCursor = None,
    method: Annotated[str, Query(pattern="^(minmax|lttb)$")] = "minmax",
    from_step: Annotated[int | None, Query(ge=0, le=INT32_MAX, description="Zoom: first step.")] = None,
    to_step: Annotated[int | None, Query(ge=0, le=INT32_MAX, description="Zoom: last step.")] = None,
) -> dict[str, Any]:
    """Series per key ([[step, value_or_null], ...]), downsampled to max_points keeping spikes.

    Read from the multi-resolution tiers, so the cost does not grow with the run; `from_step`/`to_step`
    zoom into a range (a range of at most max_points steps is read raw). `cursor` is where this history
    ends: open GET /stream?cursor=... to receive only what comes after.
    """
    series = queries.series(
        session,
        job_id=job.id,
        keys=_csv(keys),
        max_points=max_points,
        after_step=after_step,
        method=method,
        from_step=from_step,
        to_step=to_step,
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
