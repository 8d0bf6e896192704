"""The "Sweep…" form: on the job detail page (templates/group_sweep_form.html) and as a page of its own
(/jobs/{id}/sweep), which is also where a refused sweep is shown again with its messages."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.deps import JobDep, SessionDep
from app.jobs.form import FORM_FIELDS
from app.jobs.schemas import job_summary
from app.models import Job
from app.sweeps.service import MAX_SWEEP_JOBS, SweepError, create_sweep
from app.templating import templates

router = APIRouter(tags=["pages"], include_in_schema=False)

# fields one value per job makes sense for: scalars (lists cannot be typed as comma-separated values)
SWEEP_FIELDS: tuple[str, ...] = tuple(
    f.path for f in FORM_FIELDS if f.kind not in ("list", "lines") and f.path != "name"
)
AXES = (1, 2)

templates.env.globals["SWEEP_FIELDS"] = SWEEP_FIELDS
templates.env.globals["MAX_SWEEP_JOBS"] = MAX_SWEEP_JOBS


def parse_values(text: str) -> list[Any]:
    """Comma-separated values as typed; "none" or "null" mean an empty optional field.

    Values stay strings: contract.config's schema turns "1e-4" or "16" into the field's type and names
    the field when it cannot.
    """
    values: list[Any] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        values.append(None if item.lower() in ("none", "null") else item)
    return values


def axes_from_form(form: dict[str, str]) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """({field: [values]}, problems keyed by the form's input names field1/values1/...)."""
    axes: dict[str, list[Any]] = {}
    problems: dict[str, str] = {}
    for i in AXES:
        field = form.get(f"field{i}", "").strip()
        values = parse_values(form.get(f"values{i}", ""))
        if not field:
            if i == 1:
                problems["field1"] = "pick the field to sweep"
            elif values:
                problems["field2"] = "pick a field for these values, or clear them"
            continue
        if field not in SWEEP_FIELDS:
            problems[f"field{i}"] = f"{field!r} cannot be swept; pick one of the listed fields"
        elif field in axes:
            problems[f"field{i}"] = f"{field} is already the first field; pick another"
        elif not values:
            problems[f"values{i}"] = "type one or more values, separated by commas"
        else:
            axes[field] = values
    return axes, problems


def _sweep_page(
    request: Request, job: Job, form: dict[str, str], errors: dict[str, str], status_code: int = 200
) -> HTMLResponse:
    context = {"job": job_summary(job), "sweep_form": form, "sweep_errors": errors}
    return templates.TemplateResponse(request, "group_sweep.html", context, status_code=status_code)


@router.get("/jobs/{job_id:int}/sweep", response_class=HTMLResponse)
def sweep_page(request: Request, job: JobDep) -> Response:
    """The sweep form for one job."""
    return _sweep_page(request, job, {}, {})


@router.post("/jobs/{job_id:int}/sweep", response_class=HTMLResponse)
async def submit_sweep(request: Request, job: JobDep, session: SessionDep) -> Response:
    """Queue the sweep and go to its group page; refused input re-renders the form (422, nothing created)."""
    raw = await request.form()
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    axes, problems = axes_from_form(form)
    if problems:
        return _sweep_page(request, job, form, problems, status_code=422)
    try:
        group_id, _jobs = create_sweep(session, job=job, axes=axes)
    except SweepError as exc:
        # the service names dotted fields; show each message next to the input that holds that field
        by_input: dict[str, str] = {}
        for path, message in exc.problems.items():
            slot = next((i for i in AXES if form.get(f"field{i}", "").strip() == path), None)
            if slot is not None:
                by_input[f"values{slot}"] = message
            else:
                general = f"{path}: {message}" if path else message
                by_input[""] = f"{by_input['']}; {general}" if "" in by_input else general
        return _sweep_page(request, job, form, by_input, status_code=422)
    return RedirectResponse(f"/groups/{group_id}", status_code=303)
