"""Worker → app event ingest: validate a batch, upsert metrics and events, keep the job summary current.

Idempotent twice over: events with seq <= job.last_seq are skipped (a replayed spool is a no-op), and
rows are keyed (job_id, key, step) / (job_id, seq) with ON CONFLICT clauses, so even a concurrent replay
cannot duplicate. While a job runs, a later point at a stored step replaces it: a guard rollback or a resume
trains those steps again, and the curve must show what the adapter was trained on. Once the job is terminal
its token writes nothing (`check_accepting`), so a finished run's history cannot be rewritten.
One executemany per table per batch: ~200k rows/s on SQLite instead of ~4k with ORM objects. The
multi-resolution tiers and per-series summaries (app/metrics/tiers.py) are updated in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts import ArtifactError, plain_relative_path
from app.auth.redact import redact_data
from app.jobs.service import transition
from app.jobs.status import ACTIVE, JobStatus
from app.metrics.tiers import update_series
from app.models import Job, JobEvent, MetricPoint, utcnow
from contract.protocol import EventKind, read_spool

log = logging.getLogger(__name__)

_KINDS = frozenset(k.value for k in EventKind)
_NONFINITE = frozenset({"nan", "inf", "-inf"})
MAX_KEY_LENGTH = 64


class IngestError(Exception):
    """A refused batch; `status_code` is the HTTP status to answer with."""

    def __init__(self, status_code: int, detail: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.problems = problems or {}


def hash_token(token: str) -> str:
    """sha256 hex of a job token (what job.token_hash stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; IngestError(401) otherwise."""
    if not authorization:
        raise IngestError(
            401, "missing Authorization header; send 'Authorization: Bearer <job token>' from job.json"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise IngestError(401, "the Authorization header must be 'Bearer <job token>'")
    return token.strip()


def authorize(session: Session, *, job: Job, authorization: str | None) -> None:
    """Accept only the job's own token: 401 for an unknown token, 403 for another job's token."""
    token_hash = hash_token(bearer_token(authorization))
    if job.token_hash and hmac.compare_digest(token_hash, job.token_hash):
        return
    other = session.scalar(select(Job.id).where(Job.token_hash == token_hash, Job.id != job.id).limit(1))
    if other is not None:
        raise IngestError(
            403, f"this token belongs to job {other}, not job {job.id}; check job.json's job_id"
        )
    raise IngestError(401, f"invalid token for job {job.id}; the worker must use the token from its job.json")


def check_accepting(job: Job) -> None:
    """IngestError(409) unless the job's worker may still write: a finished job's token is spent.

    So is a re-queued one's (its next attempt gets a new token). The supervisor makes a job terminal only
    after its process has exited and the spool it left was stored (app/scheduler/supervisor.py), so nothing
    the worker said before it ended is refused here.
    """
    if JobStatus(job.status) not in ACTIVE:
        raise IngestError(
            409,
            f"job {job.id} is {job.status}; its worker token no longer writes events or artifacts "
            "(they are accepted only while its worker runs)",
        )


_JSON_CONSTANTS = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}


def decode_batch(body: bytes) -> Any:
    """json.loads, except that bare NaN/Infinity tokens become the protocol's strings ('nan', 'inf', '-inf').

    Python's json accepts those tokens, but they are not JSON: stored as floats they would later break
    every strict JSON answer (the SSE stream, GET /events) that includes them.
    """
    return json.loads(body, parse_constant=_JSON_CONSTANTS.__getitem__)


@dataclass
class ParsedEvent:
    """One validated event."""

    seq: int
    kind: str
    step: int
    ts: float
    payload: dict[str, Any]


_INT64 = 2**63
# seq and step live in INTEGER columns: 32-bit signed on PostgreSQL (a bigger value is a 500 there)
_INT32_MAX = 2**31 - 1


def _is_int(value: Any) -> bool:
    # beyond 64 bits no database column holds it (and float() of a 400-digit int overflows)
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def _is_number(value: Any) -> bool:
    return isinstance(value, float) or _is_int(value)


# a worker's clock may be wrong; a timestamp outside these bounds is replaced by the server's time, since a
# date no calendar can render (ts=1e300) would break every page that shows the event
MIN_EVENT_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_SLACK_S = 86_400.0


def sane_ts(ts: float, now: float) -> float:
    """`ts` if it lies between 2000-01-01 and a day after `now`, else `now`."""
    return ts if MIN_EVENT_TS <= ts <= now + FUTURE_SLACK_S else now


def _is_count(value: Any) -> bool:
    """A step or step total that fits the job's INTEGER summary columns."""
    return _is_int(value) and 0 <= value <= _INT32_MAX


def parse_batch(body: Any, *, max_events: int) -> list[ParsedEvent]:
    """Validate {"events": [...]}; IngestError 422 naming every bad index/field, 413 when too many."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise IngestError(422, "invalid batch", {"events": 'the body must be {"events": [ ... ]}'})
    raw = body["events"]
    if len(raw) > max_events:
        raise IngestError(
            413, f"{len(raw)} events in one batch; the limit is {max_events}: send smaller batches"
        )
    problems: dict[str, str] = {}
    parsed: list[ParsedEvent] = []
    now = utcnow().timestamp()
    for i, ev in enumerate(raw):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            problems[where] = "each event must be an object {seq, kind, step, ts, payload}"
            continue
        before = len(problems)
        seq, kind, step = ev.get("seq"), ev.get("kind"), ev.get("step", 0)
        ts, payload = ev.get("ts"), ev.get("payload", {})
        if not _is_int(seq) or not 1 <= seq <= _INT32_MAX:  # type: ignore[operator]
            problems[f"{where}.seq"] = f"must be an integer from 1 to {_INT32_MAX} (got {seq!r})"
        if not isinstance(kind, str) or kind not in _KINDS:  # a list or object is unhashable: check first
            problems[f"{where}.kind"] = f"must be one of {', '.join(sorted(_KINDS))} (got {kind!r})"
        if not _is_int(step) or not 0 <= step <= _INT32_MAX:
            problems[f"{where}.step"] = f"must be an integer from 0 to {_INT32_MAX} (got {step!r})"
        if ts is None:
            ts = now
        elif not _is_number(ts) or not math.isfinite(ts):
            problems[f"{where}.ts"] = f"must be seconds since the epoch (got {ts!r})"
        else:
            ts = sane_ts(float(ts), now)
        if not isinstance(payload, dict):
            problems[f"{where}.payload"] = "must be an object"
        elif kind == EventKind.METRIC.value:
            for key, value in payload.items():
                if not key or len(key) > MAX_KEY_LENGTH:
                    problems[f"{where}.payload.{key}"] = (
                        f"metric keys must be 1 to {MAX_KEY_LENGTH} characters"
                    )
                elif not (_is_number(value) or (isinstance(value, str) and value in _NONFINITE)):
                    problems[f"{where}.payload.{key}"] = (
                        f"must be a number or one of 'nan', 'inf', '-inf' (got {value!r})"
                    )
        elif kind == EventKind.ARTIFACT.value and "path" in payload:
            problem = _artifact_path_problem(payload["path"])
            if problem:
                problems[f"{where}.payload.path"] = problem
        if len(problems) == before:
            assert seq is not None and step is not None  # validated just above
            parsed.append(
                ParsedEvent(seq=int(seq), kind=str(kind), step=int(step), ts=float(ts), payload=payload)
            )
    if problems:
        raise IngestError(422, "invalid events; nothing was stored", problems)
    return parsed


def _artifact_path_problem(path: Any) -> str | None:
    """Why an artifact event's path is refused (None when it is a plain path inside the run directory)."""
    if not isinstance(path, str):
        return f"must be a relative path inside the run directory, as a string (got {path!r})"
    try:
        plain_relative_path(path)
    except ArtifactError as exc:
        return f"{exc}; name the file or directory below the run directory, e.g. 'adapter'"
    return None


@dataclass
class IngestResult:
    """What a batch did."""

    accepted: int
    last_seq: int
    control: str | None
    metric_rows: int = 0
    event_rows: int = 0
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def upsert_statements(dialect_name: str) -> tuple[Any, Any]:
    """(metric upsert, event insert-or-ignore) for SQLite or PostgreSQL, via the dialect's ON CONFLICT.

    Built once per dialect: building and compiling the statements was a fixed cost of every POST.
    """
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        insert: Any = sqlite_insert
    elif dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        insert = pg_insert
    else:
        raise RuntimeError(
            f"ingest supports SQLite and PostgreSQL, not {dialect_name}; set TUNEBOARD_DATABASE_URL to one"
        )
    metric = MetricPoint.__table__
    upsert = insert(metric)
    upsert = upsert.on_conflict_do_update(
        index_elements=[metric.c.job_id, metric.c.key, metric.c.step],
        set_={
            "value": upsert.excluded.value,
            "nonfinite": upsert.excluded.nonfinite,
            "ts": upsert.excluded.ts,
        },
    )
    event = JobEvent.__table__
    ignore = insert(event).on_conflict_do_nothing(index_elements=[event.c.job_id, event.c.seq])
    return upsert, ignore


_DRIVER_SQL: dict[tuple[str, int], tuple[str, tuple[str, ...] | None]] = {}


def _execute_raw_many(session: Session, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """executemany of `stmt` straight on the driver: compiled once, no per-row SQLAlchemy parameter work.

    SQLAlchemy's per-row parameter processing cost more than SQLite's insert itself at 1000 rows a POST.
    """
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name != "sqlite":
        # PostgreSQL: SQLAlchemy's insertmanyvalues (multi-row VALUES) beats the driver's executemany
        connection.execute(stmt, rows)
        return
    cache_key = (dialect.name, id(stmt))
    found = _DRIVER_SQL.get(cache_key)
    if found is None:
        compiled = stmt.compile(dialect=dialect)
        positions = compiled.positiontup
        found = _DRIVER_SQL[cache_key] = (str(compiled), tuple(positions) if positions else None)
    sql, positions = found
    if positions is None:  # a named paramstyle (psycopg): the dicts as they are
        connection.exec_driver_sql(sql, rows)  # type: ignore[arg-type]
    else:
        connection.exec_driver_sql(sql, [tuple(row[name] for name in positions) for row in rows])


def _metric_value(value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, str):
        return None, value
    number = float(value)
    if not math.isfinite(number):  # a client that sent a bare NaN/Infinity token
        return None, "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    return number, None


def ingest_events(session: Session, *, job: Job, events: list[ParsedEvent]) -> IngestResult:
    """Store a validated batch for `job` and update its summary columns; flushes, never commits."""
    new: dict[int, ParsedEvent] = {}
    for ev in events:
        if ev.seq > job.last_seq and ev.seq not in new:
            new[ev.seq] = ev
    ordered = [new[s] for s in sorted(new)]

    metric_rows: dict[tuple[str, int], dict[str, Any]] = {}
    event_rows: list[dict[str, Any]] = []
    for ev in ordered:
        if ev.kind == EventKind.METRIC.value:
            for key, raw in ev.payload.items():
                value, nonfinite = _metric_value(raw)
                # a later event for the same (key, step) wins; one row per key in a statement
                metric_rows[(key, ev.step)] = {
                    "job_id": job.id,
                    "key": key,
                    "step": ev.step,
                    "value": value,
                    "nonfinite": nonfinite,
                    "ts": ev.ts,
                }
        else:
            event_rows.append(
                {
                    "job_id": job.id,
                    "seq": ev.seq,
                    "step": ev.step,
                    "kind": ev.kind,
                    # log lines and samples may quote a token the worker saw: never store it
                    "payload": redact_data(ev.payload),
                    "ts": ev.ts,
                }
            )

    if metric_rows or event_rows:
        metric_upsert, event_insert = upsert_statements(session.get_bind().dialect.name)
        if metric_rows:
            _execute_raw_many(session, metric_upsert, list(metric_rows.values()))  # one executemany
            points_by_key: dict[str, list[tuple[int, float | None, str | None]]] = {}
            for (key, step), row in metric_rows.items():
                points_by_key.setdefault(key, []).append((step, row["value"], row["nonfinite"]))
            # the tiers and summaries in the same transaction: a chart never sees points without buckets
            update_series(session, job_id=job.id, points_by_key=points_by_key)
        if event_rows:
            session.execute(event_insert, event_rows)

    _update_summary(session, job, ordered)
    now = utcnow()
    job.heartbeat_at = now
    job.updated_at = now
    session.flush()
    control = "cancel" if job.status == JobStatus.CANCELLING.value else None
    return IngestResult(
        accepted=len(ordered),
        last_seq=job.last_seq,
        control=control,
        metric_rows=len(metric_rows),
        event_rows=len(event_rows),
    )


def _finite(value: Any) -> float | None:
    if not _is_number(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _update_summary(session: Session, job: Job, ordered: list[ParsedEvent]) -> None:
    """Fold the new events into the job's summary columns (in seq order).

    The columns are folded in local variables and written once per batch: an ORM attribute write per
    event (5 columns × 1000 events) was a large part of a 1000-point POST.
    """
    last_step, last_loss, best_eval, tps = (
        job.last_step,
        job.last_loss,
        job.best_eval_loss,
        job.tokens_per_second,
    )
    peak, last_seq = job.peak_vram_gb, job.last_seq
    metric_kind = EventKind.METRIC.value
    for ev in ordered:
        p = ev.payload
        if ev.kind == metric_kind:
            # the latest step, not the highest: after a guard rollback the run goes back to an earlier step
            last_step = ev.step
            if "loss" in p:
                last_loss = _finite(p["loss"])
            if "eval_loss" in p:
                eval_loss = _finite(p["eval_loss"])
                if eval_loss is not None and (best_eval is None or eval_loss < best_eval):
                    best_eval = eval_loss
            if "tokens_per_second" in p:
                value = _finite(p["tokens_per_second"])
                if value is not None:
                    tps = value
            for key in ("vram_peak_gb", "rss_gb"):
                if key in p:
                    value = _finite(p[key])
                    if value is not None and (peak is None or value > peak):
                        peak = value
        else:
            job.last_step = last_step  # the other kinds read and write the job as they go
            _fold_other(session, job, ev)
            last_step = job.last_step
        last_seq = max(last_seq, ev.seq)
    job.last_step, job.last_loss, job.best_eval_loss = last_step, last_loss, best_eval
    job.tokens_per_second, job.peak_vram_gb, job.last_seq = tps, peak, last_seq


def _fold_other(session: Session, job: Job, ev: ParsedEvent) -> None:
    """A progress, status or artifact event's part of the summary."""
    p = ev.payload
    if ev.kind == EventKind.PROGRESS.value:
        if _is_count(p.get("step")):
            job.last_step = p["step"]
        if _is_count(p.get("total_steps")) and p["total_steps"] > 0:
            job.total_steps = p["total_steps"]
        if "eta_seconds" in p:
            job.eta_seconds = _finite(p.get("eta_seconds"))
    elif ev.kind == EventKind.STATUS.value:
        if _is_count(p.get("total_steps")) and p["total_steps"] > 0:
            job.total_steps = p["total_steps"]
        if p.get("status") == JobStatus.RUNNING.value and job.status == JobStatus.STARTING.value:
            transition(session, job=job, to=JobStatus.RUNNING)
    elif ev.kind == EventKind.ARTIFACT.value:
        if p.get("name") == "adapter" and isinstance(p.get("path"), str):
            job.adapter_path = p["path"]


SPOOL_CHUNK = 2000  # events per statement batch when sweeping a spool file


def ingest_spool(session: Session, *, job: Job, spool: Path) -> int:
    """Store what a worker spooled but never delivered (it was killed, or the app was down when it ended).

    Called by the scheduler once the process has ended, before the final status is written: RUN_DIR/
    events.jsonl holds every event the worker produced, so nothing it said is lost when its last POSTs
    never arrived. Idempotent like a replay (only seq > job.last_seq counts); returns how many were new.
    A spool line that fails validation is skipped with the rest of its chunk, never blocking the finish.
    """
    fresh = [e for e in read_spool(spool) if isinstance(e, dict) and _is_int(e.get("seq"))]
    fresh = [e for e in fresh if e["seq"] > job.last_seq]
    stored = 0
    for start in range(0, len(fresh), SPOOL_CHUNK):
        chunk = fresh[start : start + SPOOL_CHUNK]
        try:
            parsed = parse_batch({"events": chunk}, max_events=SPOOL_CHUNK)
        except IngestError as exc:
            log.warning(
                "job %s: spooled events %s..%s not stored: %s %s",
                job.id,
                chunk[0]["seq"],
                chunk[-1]["seq"],
                exc.detail,
                exc.problems,
            )
            continue
        stored += ingest_events(session, job=job, events=parsed).accepted
    return stored
