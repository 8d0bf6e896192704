"""The jobs list's search, filters, sort and pages: one query shape for the page and GET /api/jobs.

Search text matches a name or model by substring (case-insensitive) or a tag exactly; words written
`status:running`, `tag:baseline`, `model:gemma`, `method:dpo` filter like the separate fields. Archived runs
are hidden unless asked for. Every filter is a column the indexes of migration 0007 serve (job.method is
the config's `method`, copied at insert; sft for configs without one). bench/jobs_list.py times it at 10,000
runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, exists, func, select
from sqlalchemy.orm import Session, defer

from app.jobs.status import JobStatus
from app.models import Job, JobTag

SORTS: dict[str, str] = {
    "newest": "newest first",
    "oldest": "oldest first",
    "name": "name A–Z",
    "status": "status",
    "loss": "lowest last loss",
}
METHODS = ("sft", "dpo", "orpo", "kto")
ARCHIVED = ("hide", "only", "all")
MAX_TERMS = 8
MAX_Q = 200
PAGE_SIZE = 100
MAX_LIMIT = 1000
_STATUSES = tuple(s.value for s in JobStatus)
_PREFIXES = ("status", "tag", "model", "method")


class ListQueryError(ValueError):
    """A filter the list cannot take: {parameter: problem} (422 on the API, shown on the page)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


@dataclass(frozen=True)
class ListQuery:
    """What the list shows: filters, sort and the page."""

    q: str = ""
    statuses: tuple[str, ...] = ()
    tag: str = ""
    model: str = ""
    method: str = ""
    created_from: date | None = None
    created_to: date | None = None
    sort: str = "newest"
    archived: str = "hide"
    offset: int = 0
    limit: int = PAGE_SIZE
    terms: tuple[str, ...] = field(default=(), compare=False)  # free words of q

    @property
    def filtered(self) -> bool:
        """Whether anything narrows the list (beyond hiding archived runs)."""
        return bool(
            self.terms
            or self.statuses
            or self.tag
            or self.model
            or self.method
            or self.created_from
            or self.created_to
            or self.archived != "hide"
        )

    @property
    def live_rows(self) -> bool:
        """Whether new runs may appear at the top as they are created (the plain newest-first first page)."""
        return not self.filtered and self.sort == "newest" and self.offset == 0

    def params(self, **changes: Any) -> str:
        """The query string of this list, with `changes` applied (for pager and sort links)."""
        q = replace(self, **changes) if changes else self
        pairs: list[tuple[str, str]] = []
        if q.q:
            pairs.append(("q", q.q))
        pairs += [("status", s) for s in q.statuses]
        for key in ("tag", "model", "method"):
            if getattr(q, key):
                pairs.append((key, getattr(q, key)))
        if q.created_from:
            pairs.append(("from", q.created_from.isoformat()))
        if q.created_to:
            pairs.append(("to", q.created_to.isoformat()))
        if q.sort != "newest":
            pairs.append(("sort", q.sort))
        if q.archived != "hide":
            pairs.append(("archived", q.archived))
        if q.offset:
            pairs.append(("offset", str(q.offset)))
        return urlencode(pairs)


def _date(raw: str, key: str, problems: dict[str, str]) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        problems[key] = f"{raw[:40]!r} is not a date; use YYYY-MM-DD"
        return None


def _int(raw: str, key: str, default: int, problems: dict[str, str]) -> int:
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 9:
        problems[key] = f"{raw[:20]!r} is not a whole number from 0 to 999999999"
        return default
    return int(raw)


def _split_statuses(values: Sequence[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def parse_list_query(
    params: Mapping[str, str], statuses: Sequence[str] = (), *, default_limit: int = PAGE_SIZE
) -> ListQuery:
    """A ListQuery from request parameters (`statuses`: every `status` value given); ListQueryError lists
    what is wrong with which parameter."""
    problems: dict[str, str] = {}
    for key in ("q", "tag", "model", "method", "sort", "archived", "from", "to"):
        if any(ord(c) < 32 or ord(c) == 127 for c in params.get(key) or ""):
            problems[key] = "contains control characters; remove them"
    if problems:
        raise ListQueryError(problems)
    q = (params.get("q") or "").strip()
    if len(q) > MAX_Q:
        problems["q"] = f"the search has {len(q)} characters; use at most {MAX_Q}"
        q = ""
    found: dict[str, list[str]] = {key: [] for key in _PREFIXES}
    terms: list[str] = []
    for word in q.split():
        key, sep, value = word.partition(":")
        if sep and key.lower() in found and value:
            found[key.lower()].append(value)
        else:
            terms.append(word.lower())
    if len(terms) > MAX_TERMS:
        problems["q"] = f"the search has {len(terms)} words; use at most {MAX_TERMS}"
    wanted = _split_statuses(list(statuses) + found["status"])
    unknown = [s for s in wanted if s not in _STATUSES]
    if unknown:
        problems["status"] = f"unknown status {unknown[0][:40]!r}; use one of {', '.join(_STATUSES)}"

    def single(key: str) -> str:
        values = [v for v in [(params.get(key) or "").strip(), *found.get(key, [])] if v]
        if len(set(values)) > 1:
            problems[key] = f"two different {key} filters given ({values[0][:40]!r}, {values[1][:40]!r})"
        return values[0] if values else ""

    tag, model, method = single("tag").lower(), single("model"), single("method").lower()
    if method and method not in METHODS:
        problems["method"] = f"unknown method {method[:40]!r}; use one of {', '.join(METHODS)}"
    sort = (params.get("sort") or "newest").strip()
    if sort not in SORTS:
        problems["sort"] = f"unknown sort {sort[:40]!r}; use one of {', '.join(SORTS)}"
    archived = (params.get("archived") or "hide").strip()
    if archived not in ARCHIVED:
        problems["archived"] = f"{archived[:40]!r}: use one of {', '.join(ARCHIVED)}"
    created_from = _date((params.get("from") or "").strip(), "from", problems)
    created_to = _date((params.get("to") or "").strip(), "to", problems)
    if created_from and created_to and created_from > created_to:
        problems["to"] = "the end date is before the start date; swap them"
    offset = _int((params.get("offset") or "").strip(), "offset", 0, problems)
    limit = max(
        1, min(_int((params.get("limit") or "").strip(), "limit", default_limit, problems), MAX_LIMIT)
    )
    if problems:
        raise ListQueryError(problems)
    return ListQuery(
        q=q,
        statuses=tuple(dict.fromkeys(wanted)),
        tag=tag,
        model=model,
        method=method,
        created_from=created_from,
        created_to=created_to,
        sort=sort,
        archived=archived,
        offset=offset,
        limit=limit,
        terms=tuple(terms[:MAX_TERMS]),
    )


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(query: ListQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.archived == "hide":
        where.append(Job.archived_at.is_(None))
    elif query.archived == "only":
        where.append(Job.archived_at.is_not(None))
    if query.statuses:
        where.append(Job.status.in_(query.statuses))
    if query.tag:
        where.append(exists().where(JobTag.job_id == Job.id, JobTag.tag == query.tag))
    if query.model:
        where.append(Job.model_name == query.model)
    if query.method:
        where.append(Job.method == query.method)
    if query.created_from:
        where.append(Job.created_at >= _day_start(query.created_from))
    if query.created_to:
        where.append(Job.created_at < _day_start(query.created_to) + timedelta(days=1))
    for term in query.terms:
        pattern = f"%{_like(term)}%"
        where.append(
            func.lower(Job.name).like(pattern, escape="\\")
            | func.lower(Job.model_name).like(pattern, escape="\\")
            | exists().where(JobTag.job_id == Job.id, JobTag.tag == term)
        )
    return where


def _ordered(stmt: Select[Any], sort: str) -> Select[Any]:
    if sort == "oldest":
        return stmt.order_by(Job.created_at.asc(), Job.id.asc())
    if sort == "name":
        return stmt.order_by(func.lower(Job.name).asc(), Job.id.desc())
    if sort == "status":
        return stmt.order_by(Job.status.asc(), Job.created_at.desc(), Job.id.desc())
    if sort == "loss":
        return stmt.order_by(Job.last_loss.is_(None).asc(), Job.last_loss.asc(), Job.id.desc())
    return stmt.order_by(Job.created_at.desc(), Job.id.desc())


def list_page(session: Session, query: ListQuery) -> tuple[list[Job], int]:
    """The jobs of this page and how many match in all."""
    where = _conditions(query)
    # a page shows summaries: the stored config and its text (kilobytes per run) stay in the database
    light = select(Job).options(defer(Job.config), defer(Job.config_text), defer(Job.stderr_tail))
    stmt = _ordered(light.where(*where), query.sort).offset(query.offset).limit(query.limit)
    jobs = list(session.scalars(stmt))
    if query.offset == 0 and len(jobs) < query.limit:
        return jobs, len(jobs)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    return jobs, int(total)


def any_jobs(session: Session) -> bool:
    """Whether there is any job at all (archived ones too)."""
    return session.scalar(select(Job.id).limit(1)) is not None


def model_names(session: Session, *, limit: int = 200) -> list[str]:
    """The models runs used, for the model filter (ix_job_list_model serves it)."""
    stmt = select(Job.model_name).where(Job.model_name != "").distinct().order_by(Job.model_name).limit(limit)
    return list(session.scalars(stmt))


def describe(query: ListQuery) -> str:
    """The filters in words ("status running · tag baseline"), for the page's count line."""
    parts = [f"“{t}”" for t in query.terms]
    if query.statuses:
        parts.append("status " + " or ".join(query.statuses))
    for key in ("tag", "model", "method"):
        if getattr(query, key):
            parts.append(f"{key} {getattr(query, key)}")
    if query.created_from:
        parts.append(f"from {query.created_from.isoformat()}")
    if query.created_to:
        parts.append(f"to {query.created_to.isoformat()}")
    if query.archived == "only":
        parts.append("archived only")
    elif query.archived == "all":
        parts.append("archived included")
    return " · ".join(parts)
