"""Server-rendered pages: the jobs list, the new-job form (generated from JobConfig), the job detail page.

Every page reads fully without JavaScript; htmx enhances the forms (live memory estimate, buttons
that do not reload the page) and static/js/live.js adds the charts and the live updates from one
EventSource per page. Fragments are named blocks of the page templates (`render_block`), so a page
and the fragment that refreshes part of it can never drift apart.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app import artifacts
from app.auth.redact import redact_data, redact_secrets
from app.datasets.sources import check_job_source
from app.deps import JobDep, SeqCursor, SessionDep
from app.http import read_body_limited
from app.jobs import service
from app.jobs.schemas import iso, job_summary
from app.jobs.status import TERMINAL, JobStatus, TransitionError
from app.models import Job, JobEvent, MetricPoint
from contract.catalog import KNOWN_HUB_MODELS, PRESET_DATASETS, PRESET_MODELS, PRESET_PREFIX
from contract.config import ConfigError, JobConfig, config_to_dict, demo_config, field_paths, parse_config
from contract.estimate import MemoryEstimate, estimate_memory

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

router = APIRouter(tags=["pages"], include_in_schema=False)
templates = Jinja2Templates(directory=TEMPLATES_DIR)

# the sections of JobConfig in form order, with the legend each fieldset shows
SECTION_TITLES: dict[str, str] = {
    "": "Run",
    "model": "Model",
    "dataset": "Dataset",
    "quantization": "Quantization",
    "lora": "LoRA adapter",
    "training": "Training",
    "guard": "Divergence guard",
    "resources": "Resources",
}
# labels that the field name alone would spell badly
FIELD_LABELS = {
    "r": "Rank (r)",
    "gpus": "GPUs",
    "attn_implementation": "Attention kernel",
    "max_seq_len": "Max sequence length",
    "grad_accum": "Gradient accumulation",
    "auto_micro_batch": "Auto micro-batch",
    "eval_fraction": "Eval fraction",
    "max_new_tokens": "Sample length (tokens)",
    "max_runtime_minutes": "Max runtime (minutes)",
}
# list fields whose items may themselves contain commas: one item per line instead
LINE_LIST_FIELDS = frozenset({"training.sample_prompts"})
# event kinds shown in the events table (metrics are charted; progress/heartbeat are summarised in the header)
LISTED_EVENT_KINDS = ("status", "log", "preflight", "checkpoint", "guard", "artifact")
MARKER_EVENT_KINDS = ("guard", "preflight", "checkpoint")
DETAIL_EVENT_LIMIT = 300
ACTIVE_STATUSES = frozenset({"queued", "starting", "running", "cancelling"})

# ---------------------------------------------------------------------------------------------------------
# The form, generated from the pydantic schema


@dataclass(frozen=True)
class FormField:
    """One input of the new-job form, derived from a JobConfig leaf field."""

    path: str  # dotted: training.learning_rate (also the input's name)
    section: str  # "" for top-level fields
    label: str
    kind: str  # select | checkbox | number | text | list | lines
    choices: tuple[str, ...]
    optional: bool
    integer: bool
    help: str
    allows_auto: bool  # list fields that also accept the word "auto"

    @property
    def input_id(self) -> str:
        """The HTML id of the input (the label's `for`)."""
        return "f-" + self.path.replace(".", "-")

    @property
    def error_id(self) -> str:
        """The HTML id of this field's inline error message."""
        return self.input_id + "-error"


def _field_info(path: str) -> FieldInfo:
    model: type[BaseModel] = JobConfig
    parts = path.split(".")
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model.model_fields[parts[-1]]


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _constraint_hint(info: FieldInfo) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = []
    for meta in info.metadata:
        for attr, sign in words.items():
            value = getattr(meta, attr, None)
            if isinstance(value, (int, float)):
                shown = f"{value:,}" if float(value).is_integer() and abs(value) >= 10_000 else f"{value:g}"
                bounds.append(f"{sign} {shown.replace(',', ' ')}")
    return ", ".join(bounds)


def _make_field(path: str) -> FormField:
    info = _field_info(path)
    section, _, name = path.rpartition(".")
    members = _union_members(info.annotation)
    optional = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    lists = [m for m in members if typing.get_origin(m) is list]
    kind, integer, allows_auto = "text", False, False
    choices: tuple[str, ...] = ()
    if lists:
        kind = "lines" if path in LINE_LIST_FIELDS else "list"
        allows_auto = bool(literals)
    elif literals:
        kind = "select"
        choices = tuple(str(v) for lit in literals for v in typing.get_args(lit))
    elif members == (bool,):
        kind = "checkbox"
    elif members in ((int,), (float,)):
        kind = "number"
        integer = members == (int,)
    help_text = info.description or ""
    hint = _constraint_hint(info)
    # descriptions that already state their range in parentheses do not need it twice
    if hint and kind == "number" and "(" not in help_text:
        help_text = f"{help_text} Allowed: {hint}."
    if optional:
        help_text += " Leave empty for none."
    if kind == "list":
        help_text += " Comma-separated."
    elif kind == "lines":
        help_text += " One per line."
    label = FIELD_LABELS.get(name) or name.replace("_", " ").capitalize()
    return FormField(path, section, label, kind, choices, optional, integer, help_text.strip(), allows_auto)


FORM_FIELDS: tuple[FormField, ...] = tuple(_make_field(p) for p in field_paths())


def form_sections() -> list[tuple[str, str, list[FormField]]]:
    """(section key, legend, fields) in schema order."""
    grouped: dict[str, list[FormField]] = {}
    for f in FORM_FIELDS:
        grouped.setdefault(f.section, []).append(f)
    return [(key, SECTION_TITLES.get(key, key.capitalize()), grouped[key]) for key in grouped]


def _format_value(f: FormField, value: Any) -> str:
    if value is None:
        return ""
    if f.kind == "checkbox":
        return "true" if value else "false"
    if isinstance(value, list):
        return ("\n" if f.kind == "lines" else ", ").join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e16 else str(int(value))
    return str(value)


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def form_values_from_config(config: dict[str, Any]) -> dict[str, str]:
    """The form's text values for a (canonical) config dict."""
    return {f.path: _format_value(f, _lookup(config, f.path)) for f in FORM_FIELDS}


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def config_from_form(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """(config dict to validate, the raw values to show again). Types are left to pydantic to judge."""
    data: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for f in FORM_FIELDS:
        values = [v for v in form.getlist(f.path) if isinstance(v, str)]
        if f.kind == "checkbox":
            # a hidden "false" precedes the checkbox: an unchecked box sends only that one
            checked = bool(values) and values[-1] == "true"
            raw[f.path] = "true" if checked else "false"
            _set_path(data, f.path, checked)
            continue
        text = values[-1] if values else ""
        raw[f.path] = text
        stripped = text.strip()
        value: Any
        if f.kind == "list":
            if f.allows_auto and stripped == "auto":
                value = "auto"
            else:
                value = [item.strip() for item in stripped.split(",") if item.strip()]
        elif f.kind == "lines":
            value = [line.strip() for line in text.splitlines() if line.strip()]
        elif f.optional and stripped == "":
            value = None
        elif f.kind == "number":
            value = stripped  # "abc" or "" reach pydantic, which names the field and the problem
        else:
            value = text if f.path == "name" else stripped
        _set_path(data, f.path, value)
    return data, raw


def split_problems(problems: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Problems by field path, by section, and the rest (shown above the form)."""
    paths = {f.path for f in FORM_FIELDS}
    by_field: dict[str, str] = {}
    by_section: dict[str, str] = {}
    general: dict[str, str] = {}
    for key, message in problems.items():
        if key in paths:
            by_field[key] = message
        elif key in SECTION_TITLES and key:
            by_section[key] = message
        else:
            general[key] = message
    return by_field, by_section, general


# ---------------------------------------------------------------------------------------------------------
# Template helpers


def fmt_number(value: Any, digits: int = 4) -> str:
    """A compact number for tables ("—" for missing, plain words for non-finite)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("∞" if value > 0 else "−∞")
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: Any) -> str:
    """Seconds as "1 h 02 min", "3 min 05 s" or "42 s"."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def fmt_utc(value: str | None) -> str:
    """The UTC fallback text of an ISO timestamp (JavaScript replaces it with local time)."""
    if not value:
        return "—"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ts_iso(ts: float | None) -> str | None:
    """Seconds since the epoch (a worker's clock) as ISO 8601 UTC; None when no calendar date fits."""
    if ts is None or not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # stored before ingest bounded it (e.g. ts=1e300)
        return None


def describe_event(event: dict[str, Any]) -> str:
    """One line of plain words for an event in the events table."""
    kind = event.get("kind")
    p = event.get("payload") or {}
    if kind == "status":
        return " — ".join(str(x) for x in (p.get("status"), p.get("message")) if x)
    if kind == "log":
        return str(p.get("message", ""))
    if kind == "preflight":
        verdict = "passed" if p.get("ok") else "found problems"
        kept = p.get("kept_in_full_precision") or []
        extra = f" (kept in full precision: {', '.join(map(str, kept))})" if kept else ""
        return f"preflight {verdict}: {p.get('summary', '')}{extra}"
    if kind == "checkpoint":
        return f"checkpoint saved at step {p.get('step', event.get('step'))}: {p.get('path', '')}"
    if kind == "guard":
        return f"guard {p.get('action', '')}: {p.get('reason', '')}"
    if kind == "artifact":
        return f"{p.get('name', 'artifact')} written to {p.get('path', '')}"
    if kind == "sample":
        return f"{p.get('prompt', '')} → {p.get('completion', '')}"
    return ", ".join(f"{k}={v}" for k, v in p.items())


def event_level(event: dict[str, Any]) -> str:
    """A CSS hint: error, warning or info."""
    p = event.get("payload") or {}
    if event.get("kind") == "guard" or (event.get("kind") == "preflight" and not p.get("ok", True)):
        return "warning"
    if event.get("kind") == "log":
        return str(p.get("level", "info"))
    return "info"


templates.env.filters["num"] = fmt_number
templates.env.filters["duration"] = fmt_duration
templates.env.filters["utc"] = fmt_utc
templates.env.filters["ts_iso"] = ts_iso
templates.env.globals["describe_event"] = describe_event
templates.env.globals["event_level"] = event_level
templates.env.globals["ACTIVE_STATUSES"] = ACTIVE_STATUSES


def render_block(template_name: str, block_name: str, context: dict[str, Any]) -> str:
    """Render one named block of a page template (the htmx fragment of that part of the page)."""
    template = templates.env.get_template(template_name)
    return "".join(template.blocks[block_name](template.new_context(context)))


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# ---------------------------------------------------------------------------------------------------------
# Jobs list


@router.get("/", response_class=HTMLResponse)
def jobs_list_page(request: Request, session: SessionDep) -> Response:
    """The jobs list: status, progress, last loss, peak memory; live through /api/stream."""
    jobs = [job_summary(j) for j in service.list_jobs(session, limit=200)]
    return templates.TemplateResponse(request, "jobs_list.html", {"jobs": jobs})


@router.post("/jobs/demo")
def create_demo_job_page(session: SessionDep) -> Response:
    """One click: queue the demo job and go to its page."""
    config = demo_config()
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    job = service.create_job(session, config=config, config_text=text)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


# ---------------------------------------------------------------------------------------------------------
# New job


def _model_choices() -> list[tuple[str, str]]:
    presets = [(PRESET_PREFIX + m.name, m.description) for m in PRESET_MODELS.values()]
    hub = [(name, m.description) for name, m in KNOWN_HUB_MODELS.items()]
    return presets + hub


def _dataset_choices(session: Session | None = None) -> list[tuple[str, str]]:
    if session is not None:  # uploads (app/datasets) first, then the presets
        from app.datasets.service import dataset_choices

        return dataset_choices(session)
    return [(PRESET_PREFIX + d.name, d.description) for d in PRESET_DATASETS.values()]


def _estimate_for(config: JobConfig | None) -> MemoryEstimate | None:
    return estimate_memory(config) if config is not None else None


def _new_job_context(
    *,
    values: dict[str, str],
    config_text: str,
    parent_job_id: int | None = None,
    field_errors: dict[str, str] | None = None,
    section_errors: dict[str, str] | None = None,
    general_errors: dict[str, str] | None = None,
    text_errors: dict[str, str] | None = None,
    mode: str = "fields",
    estimate: MemoryEstimate | None = None,
    estimate_problem: str | None = None,
    session: Session | None = None,
) -> dict[str, Any]:
    return {
        "sections": form_sections(),
        "values": values,
        "config_text": config_text,
        "parent_job_id": parent_job_id,
        "field_errors": field_errors or {},
        "section_errors": section_errors or {},
        "general_errors": general_errors or {},
        "text_errors": text_errors or {},
        "mode": mode,
        "model_choices": _model_choices(),
        "dataset_choices": _dataset_choices(session),
        "estimate": estimate,
        "estimate_problem": estimate_problem,
    }


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(
    request: Request, session: SessionDep, preset: str | None = None, dataset: str | None = None
) -> Response:
    """The new-job form; ?from=ID prefills it from that job (clone and edit), ?preset=demo from the demo,
    ?dataset=SOURCE sets dataset.source (the "New job with this dataset" button)."""
    from_id = request.query_params.get("from")  # "from" is a Python keyword: read it by hand
    parent: Job | None = None
    if from_id is not None:
        try:
            parent = service.get_job(session, int(from_id))
        except (ValueError, service.JobNotFound):
            return _not_found_page(
                request, f"There is no job {from_id!r} to clone; pick one from the jobs list."
            )
    if parent is not None:
        text = redact_secrets(service.clone_config(parent)) or ""
        try:
            config = parse_config(parent.config)
        except ConfigError:
            # stored before a schema change: the pasted-config box still carries the original text
            config = JobConfig.model_validate({})
    else:
        config = demo_config() if preset == "demo" else JobConfig.model_validate({})
        if dataset:
            data = config_to_dict(config)
            data["dataset"]["source"] = dataset
            try:
                config = parse_config(data)
            except ConfigError:
                pass  # an unknown preset name: keep the default source rather than fail the page
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    context = _new_job_context(
        values=form_values_from_config(redact_data(config_to_dict(config))),
        config_text=text,
        parent_job_id=parent.id if parent is not None else None,
        estimate=_estimate_for(config),
        session=session,
    )
    return templates.TemplateResponse(request, "job_new.html", context)


def _parent_id(form: FormData) -> int | None:
    raw = form.get("parent_job_id")
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_new_job(request: Request, session: SessionDep) -> Response:
    """Create a job from the form fields or the pasted config; invalid input re-renders with 422."""
    form = await request.form()
    parent_id = _parent_id(form)
    if parent_id is not None and session.get(Job, parent_id) is None:
        parent_id = None  # the parent was deleted meanwhile: still create the job, without lineage
    mode = "text" if form.get("mode") == "text" else "fields"
    if mode == "text":
        raw_text = form.get("config_text")
        text = raw_text if isinstance(raw_text, str) else ""
        try:
            job = service.submit_text(session, text=text, filename="config.yaml", parent_job_id=parent_id)
        except ConfigError as exc:
            values = form_values_from_config(config_to_dict(JobConfig.model_validate({})))
            context = _new_job_context(
                values=values,
                config_text=text,
                parent_job_id=parent_id,
                text_errors=exc.problems,
                mode="text",
                session=session,
            )
            return templates.TemplateResponse(request, "job_new.html", context, status_code=422)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    data, raw = config_from_form(form)
    try:
        config = parse_config(data)
        check_job_source(session, config)  # create_job checks it too; here it shows next to the field
    except ConfigError as exc:
        by_field, by_section, general = split_problems(exc.problems)
        context = _new_job_context(
            values=raw,
            config_text=str(form.get("config_text") or ""),
            parent_job_id=parent_id,
            field_errors=by_field,
            section_errors=by_section,
            general_errors=general,
            estimate_problem="Fix the highlighted fields to see a memory estimate.",
            session=session,
        )
        return templates.TemplateResponse(request, "job_new.html", context, status_code=422)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    job = service.create_job(session, config=config, config_text=text, parent_job_id=parent_id)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/jobs/estimate", response_class=HTMLResponse)
async def estimate_fragment(request: Request) -> Response:
    """The memory-estimate panel for the form's current values (htmx swaps it in on every change)."""
    form = await request.form()
    data, _raw = config_from_form(form)
    estimate: MemoryEstimate | None = None
    problem: str | None = None
    try:
        estimate = estimate_memory(parse_config(data))
    except ConfigError as exc:
        fields = ", ".join(sorted(k or "(config)" for k in exc.problems))
        problem = f"Fix these fields to see an estimate: {fields}."
    html = render_block(
        "job_new.html", "estimate", {"request": request, "estimate": estimate, "estimate_problem": problem}
    )
    return HTMLResponse(html)


@router.post("/api/estimate", include_in_schema=True, tags=["jobs"])
async def estimate_api(request: Request) -> Response:
    """Memory estimate for a JSON config: {"total_gb", "breakdown", "notes"} (422 with the problems)."""
    settings = request.app.state.settings
    body = await read_body_limited(request, settings.max_config_bytes, "the job config")
    try:
        # a config near the cap takes a while to parse: in a thread, so other requests are not held up
        data = await anyio.to_thread.run_sync(json.loads, body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
        return JSONResponse(
            {"detail": "invalid job config", "problems": {"": "the body is not valid JSON; send the config"}},
            status_code=422,
        )
    config = await anyio.to_thread.run_sync(parse_config, data)  # ConfigError → 422 (the app's handler)
    return JSONResponse(estimate_memory(config).as_dict())


# ---------------------------------------------------------------------------------------------------------
# Job detail


def _latest_values(session: SessionDep, job_id: int) -> dict[str, float | None]:
    """The newest value of every metric key (for the no-JavaScript table and the header)."""
    m = MetricPoint.__table__
    newest = (
        select(m.c.key, func.max(m.c.step).label("step")).where(m.c.job_id == job_id).group_by(m.c.key)
    ).subquery()
    stmt = (
        select(m.c.key, m.c.value, m.c.nonfinite)
        .join(newest, (m.c.key == newest.c.key) & (m.c.step == newest.c.step))
        .where(m.c.job_id == job_id)
        .order_by(m.c.key)
    )
    result: dict[str, float | None] = {}
    for key, value, nonfinite in session.execute(stmt):
        result[key] = float(nonfinite) if value is None and nonfinite else value
    return result


def _recent_events(session: SessionDep, job_id: int, *, after_seq: int = 0) -> list[dict[str, Any]]:
    """The newest listed events (oldest first), at most DETAIL_EVENT_LIMIT."""
    e = JobEvent.__table__
    stmt = (
        select(e)
        .where(e.c.job_id == job_id, e.c.seq > after_seq, e.c.kind.in_((*LISTED_EVENT_KINDS, "sample")))
        .order_by(e.c.seq.desc())
        .limit(DETAIL_EVENT_LIMIT)
    )
    rows = list(session.execute(stmt))
    rows.reverse()
    return [{"seq": r.seq, "step": r.step, "kind": r.kind, "payload": r.payload, "ts": r.ts} for r in rows]


def _event_sections(events: list[dict[str, Any]]) -> dict[str, Any]:
    listed = [ev for ev in events if ev["kind"] in LISTED_EVENT_KINDS]
    samples = [ev for ev in events if ev["kind"] == "sample"]
    markers = [
        {"step": ev["step"], "kind": ev["kind"], "text": describe_event(ev)}
        for ev in events
        if ev["kind"] in MARKER_EVENT_KINDS
    ]
    return {"events": listed, "samples": list(reversed(samples)), "markers": markers}


def _detail_context(session: SessionDep, job: Job, *, message: str | None = None) -> dict[str, Any]:
    summary = job_summary(job)
    events = _recent_events(session, job.id)
    tail = artifacts.stderr_tail(job.run_dir)
    from app.tasks.views import takeaway_context  # downloads, merged export, try-the-adapter panels

    return {
        "takeaway": takeaway_context(job),
        "job": summary,
        "config_text": redact_secrets(job.config_text),
        "logs": tail if tail is not None else (redact_secrets(job.stderr_tail) or ""),
        "latest": _latest_values(session, job.id),
        "last_seq": job.last_seq or 0,
        "message": message,
        "created_iso": iso(job.created_at),
        **_event_sections(events),
    }


def _not_found_page(request: Request, what: str) -> HTMLResponse:
    html = templates.get_template("error.html").render(request=request, title="Job not found", message=what)
    return HTMLResponse(html, status_code=404)


@router.get("/jobs/{job_id:int}", response_class=HTMLResponse)
def job_detail_page(request: Request, job_id: int, session: SessionDep) -> Response:
    """One job: summary, live charts, events, samples, logs and the config as submitted."""
    try:
        job = service.get_job(session, job_id)
    except service.JobNotFound:
        return _not_found_page(request, f"There is no job {job_id}; pick one from the jobs list.")
    return templates.TemplateResponse(request, "job_detail.html", _detail_context(session, job))


@router.get("/jobs/{job_id:int}/partials/events", response_class=HTMLResponse)
def job_events_fragment(
    request: Request, job: JobDep, session: SessionDep, after_seq: SeqCursor = 0
) -> Response:
    """New rows for the events table and new sample cards (live.js appends them as events arrive)."""
    sections = _event_sections(_recent_events(session, job.id, after_seq=after_seq))
    html = render_block("job_detail.html", "new_events", {"request": request, **sections})
    return HTMLResponse(html)


def _action_response(request: Request, session: SessionDep, job: Job, error: str | None) -> Response:
    if _is_htmx(request):
        # htmx swaps only 2xx answers: a refused action is still a 200 whose fragment says why
        html = render_block(
            "job_detail.html", "actions", {"request": request, "job": job_summary(job), "message": error}
        )
        return HTMLResponse(html)
    if error is None:
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    context = _detail_context(session, job, message=error)
    return templates.TemplateResponse(request, "job_detail.html", context, status_code=409)


@router.post("/jobs/{job_id:int}/cancel")
def cancel_job_page(request: Request, job: JobDep, session: SessionDep) -> Response:
    """Cancel from the page: a queued job stops at once, a running one checkpoints and stops."""
    try:
        service.cancel_job(session, job=job)
    except TransitionError as exc:
        return _action_response(request, session, job, str(exc))
    return _action_response(request, session, job, None)


@router.post("/jobs/{job_id:int}/resume")
def resume_job_page(request: Request, job: JobDep, session: SessionDep) -> Response:
    """Resume a failed or cancelled job from its last complete checkpoint."""
    try:
        service.resume_job(session, job=job)
    except TransitionError as exc:
        return _action_response(request, session, job, str(exc))
    return _action_response(request, session, job, None)


def is_terminal_status(status: str) -> bool:
    """True for succeeded, failed and cancelled."""
    return JobStatus(status) in TERMINAL
