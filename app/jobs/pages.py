"""The jobs pages: the list, the new-job form, one job's page and the actions its buttons post.

Every page reads fully without JavaScript; htmx enhances the forms (live memory estimate, buttons that
do not reload the page) and static/js/live.js adds the charts and the live updates from one EventSource
per page. Fragments are named blocks of the page templates (`render_block`), so a page and the fragment
that refreshes part of it can never drift apart. The form itself is generated in app/jobs/form.py.
"""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app import artifacts
from app.auth.redact import redact_data, redact_secrets
from app.datasets.sources import check_job_source
from app.deps import JobDep, SeqCursor, SessionDep
from app.jobs import service
from app.jobs.events import (
    DETAIL_EVENT_LIMIT,
    LISTED_EVENT_KINDS,
    describe_event,
    event_level,
    event_sections,
)
from app.jobs.form import (
    FORM_FIELDS,
    config_from_form,
    convert_pasted_config,
    form_sections,
    form_values_from_config,
    split_problems,
)
from app.jobs.run_plan import latest_plan_view
from app.jobs.schemas import iso, job_summary
from app.jobs.status import TransitionError
from app.metrics import queries
from app.models import Job
from app.templating import is_htmx, render_block, templates
from contract.catalog import KNOWN_HUB_MODELS, PRESET_DATASETS, PRESET_MODELS, PRESET_PREFIX
from contract.config import ConfigError, JobConfig, config_to_dict, demo_config, parse_config, stored_config
from contract.estimate import MemoryEstimate, estimate_memory
from contract.metrics import PANELS, panel_metrics, panels_for
from contract.preference import (
    PREFERENCE_METHODS,
    followup_config,
    init_adapter_job,
    preference_demo,
    sft_then_dpo_demo,
)

router = APIRouter(tags=["pages"], include_in_schema=False)

templates.env.globals["describe_event"] = describe_event
templates.env.globals["event_level"] = event_level
templates.env.globals["CHART_PANELS"] = PANELS
templates.env.globals["panel_metrics"] = panel_metrics

# ---------------------------------------------------------------------------------------------------------
# Jobs list


@router.get("/", response_class=HTMLResponse)
def jobs_list_page(request: Request, session: SessionDep) -> Response:
    """The jobs list: status, progress, last loss, peak memory; live through /api/stream. Search, filters,
    sort and pages: app/jobs/list_page.py."""
    from app.jobs.list_page import render_jobs_list

    return render_jobs_list(request, session)


@router.post("/jobs/demo")
def create_demo_job_page(session: SessionDep) -> Response:
    """One click: queue the demo job and go to its page."""
    config = demo_config()
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    job = service.create_job(session, config=config, config_text=text)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/jobs/demo-preference")
def create_preference_demo_page(session: SessionDep) -> Response:
    """One click: SFT, then DPO from its adapter (the DPO job waits in the queue for the SFT job)."""
    sft_data, dpo_data = sft_then_dpo_demo(config_to_dict(demo_config()))
    sft = parse_config(sft_data)
    sft_job = service.create_job(session, config=sft, config_text=yaml.safe_dump(sft_data, sort_keys=False))
    dpo_data["init_adapter"] = f"job:{sft_job.id}"
    dpo = parse_config(dpo_data)
    text = yaml.safe_dump(dpo_data, sort_keys=False)
    service.create_job(session, config=dpo, config_text=text, parent_job_id=sft_job.id)
    return RedirectResponse("/", status_code=303)  # the list shows both: the SFT job runs, DPO waits


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
            config = stored_config(parent.config)
        except ConfigError:
            # stored before a schema change: the pasted-config box still carries the original text
            config = JobConfig.model_validate({})
    else:
        config = demo_config() if preset == "demo" else JobConfig.model_validate({})
        if preset == "preference":  # "Try preference tuning": DPO on the generated pairs
            config = parse_config(preference_demo(config_to_dict(demo_config())))
        if dataset:
            data = config_to_dict(config)
            data["dataset"]["source"] = dataset
            try:
                config = parse_config(data)
            except ConfigError:
                pass  # an unknown preset name: keep the default source rather than fail the page
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    tune = request.query_params.get("tune")  # "Preference-tune this run": ?from=ID&tune=dpo
    if parent is not None and tune in PREFERENCE_METHODS:
        config = parse_config(followup_config(config_to_dict(config), parent.id, tune))
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
            # a LLaMA-Factory or Axolotl YAML: converted and shown for review, no job created yet
            imported = convert_pasted_config(text)
            if imported is not None:
                context = _new_job_context(
                    values=form_values_from_config(config_to_dict(imported.config)),
                    config_text=imported.yaml_text(),
                    parent_job_id=parent_id,
                    mode="text",
                    estimate=_estimate_for(imported.config),
                    session=session,
                )
                context["imported"] = imported
                return templates.TemplateResponse(request, "job_new.html", context)
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
    live_problems: list[dict[str, str]] = []
    try:
        estimate = estimate_memory(parse_config(data))
    except ConfigError as exc:
        problem = "Fix these before creating the job (they would be refused):"
        live_problems = live_problem_list(exc.problems)
    context: dict[str, Any] = {"request": request, "estimate": estimate, "estimate_problem": problem}
    context["live_problems"] = live_problems
    return HTMLResponse(render_block("job_new.html", "estimate", context))


def live_problem_list(problems: dict[str, str]) -> list[dict[str, str]]:
    """The form's problems while it is edited, each linked to its input when the form has one."""
    by_path = {f.path: f for f in FORM_FIELDS}
    listed = []
    for path, message in problems.items():
        f = by_path.get(path)
        listed.append(
            {
                "path": path or "(config)",
                "label": f.label if f else path,
                "input_id": f.input_id if f else "",
                "message": message,
            }
        )
    return listed


# ---------------------------------------------------------------------------------------------------------
# Job detail


def _detail_context(session: SessionDep, job: Job, *, message: str | None = None) -> dict[str, Any]:
    summary = job_summary(job)
    events = queries.newest_events(
        session, job_id=job.id, kinds=(*LISTED_EVENT_KINDS, "sample"), limit=DETAIL_EVENT_LIMIT
    )
    # the run's own log (every message, library warnings, tracebacks), else the raw process output
    tail = artifacts.full_log_tail(job.run_dir) or artifacts.stderr_tail(job.run_dir)
    from app.jobs.manage_pages import manage_view
    from app.tasks.views import takeaway_context  # downloads, merged export, try-the-adapter panels

    return {
        "takeaway": takeaway_context(job),
        "job": summary,
        "config_text": redact_secrets(job.config_text),
        "logs": tail if tail is not None else (redact_secrets(job.stderr_tail) or ""),
        "latest": queries.latest_values(session, job_id=job.id),
        "last_seq": job.last_seq or 0,
        "message": message,
        "created_iso": iso(job.created_at),
        **event_sections(events),
        "run_plan": latest_plan_view(session, job_id=job.id),  # run plan panel: partials/run_plan.html
        **_method_view(job),  # the method's chart panels; "Preference-tune this run" on finished SFT jobs
        "manage": manage_view(session, job),  # name, notes, tags, archive, delete: app/jobs/manage_pages.py
    }


def _method_view(job: Job) -> dict[str, Any]:
    """The job's `method`, the chart panels it draws, and whether it can be preference-tuned further."""
    try:
        config = stored_config(job.config)
        method, starts_from = config.method, init_adapter_job(config.init_adapter)
    except ConfigError:
        method, starts_from = "sft", None
    return {
        "job_method": method,
        "chart_panels": panels_for(method),
        "can_preference_tune": method == "sft" and job.status == "succeeded",
        # a queued job that continues another job's adapter starts once that job has succeeded
        "waits_for_job": starts_from if job.status == "queued" else None,
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
    sections = event_sections(
        queries.newest_events(
            session,
            job_id=job.id,
            kinds=(*LISTED_EVENT_KINDS, "sample"),
            after_seq=after_seq,
            limit=DETAIL_EVENT_LIMIT,
        )
    )
    html = render_block("job_detail.html", "new_events", {"request": request, **sections})
    return HTMLResponse(html)


def _action_response(request: Request, session: SessionDep, job: Job, error: str | None) -> Response:
    if is_htmx(request):
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
