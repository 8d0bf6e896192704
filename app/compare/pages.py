"""Compare pages: /compare?ids=1,2,3&metric=loss&x=step (shareable) and /groups/{group_id} (a sweep).

The server renders the legend, the summary table and the config table (readable without JavaScript);
static/js/compare.js draws the overlaid curves and keeps everything live from ONE EventSource
(/api/compare/stream), and writes metric, x axis and the differences-only toggle back into the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.compare import service
from app.compare.labels import distinguishing_labels
from app.compare.service import CompareError
from app.deps import SessionDep
from app.models import Job
from app.templating import templates
from contract.metrics import CHARTED_KEYS, X_AXIS_KEYS, metric_label

router = APIRouter(tags=["pages"], include_in_schema=False)

# stroke dash patterns (px) for runs; with the 8 colours every run differs in colour AND dash
DASHES: tuple[tuple[int, ...], ...] = (
    (),
    (8, 4),
    (2, 3),
    (10, 3, 2, 3),
    (4, 4),
    (14, 5),
    (2, 6),
    (10, 3, 2, 3, 2, 3),
)
COLOURS = 8
X_LABELS = {"step": "step", **{key: metric_label(key) for key in X_AXIS_KEYS}}
# metrics offered first in the picker, in the job page's panel order, when the runs have them
PREFERRED_METRICS = CHARTED_KEYS


def config_value(value: Any) -> str:
    """A config value as the config table shows it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "[]"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)  # never hide a difference by rounding
    return str(value)


templates.env.filters["cfg"] = config_value


def run_style(index: int) -> dict[str, Any]:
    """Colour and dash of the index-th run; distinct pairs for up to 64 runs."""
    return {"colour": index % COLOURS + 1, "dash": list(DASHES[(index + index // COLOURS) % len(DASHES)])}


def _metric_options(keys_by_job: dict[int, list[str]]) -> list[str]:
    keys = {k for keys in keys_by_job.values() for k in keys} | {"loss", "eval_loss"}
    preferred = [k for k in PREFERRED_METRICS if k in keys]
    return preferred + sorted(keys - set(preferred))


def compare_context(
    session: SessionDep,
    jobs: list[Job],
    *,
    metric: str | None,
    x: str | None,
    diff: str | None,
    group_id: str | None = None,
) -> dict[str, Any]:
    """Everything the compare template needs for these jobs and URL state."""
    ids = [j.id for j in jobs]
    keys_by_job = service.metric_keys(session, ids)
    options = _metric_options(keys_by_job)
    chosen_metric = metric if metric else "loss"
    if chosen_metric not in options:
        options.append(
            chosen_metric
        )  # a shared link to a metric nobody has yet: show "no data", not an error
    chosen_x = x if x in service.X_AXES else "step"
    rows = service.compare_rows(session, jobs)
    table = service.config_table(jobs)
    differing_list = service.differing_keys(table)
    differing = set(differing_list)
    distinct = distinguishing_labels(table, differing_list)
    runs = []
    for i, row in enumerate(rows):
        keys = set(keys_by_job[row["id"]])
        has_x = chosen_x == "step" or chosen_x in keys
        runs.append(
            {
                **row,
                **run_style(i),
                "has_metric": chosen_metric in keys and has_x,
                "distinct": distinct.get(row["id"], ""),
            }
        )
    config_rows = [
        {"key": key, "values": [values[i] for i in ids], "differs": key in differing}
        for key, values in table.items()
    ]
    diff_only = diff not in ("0", "false", "off")
    query: dict[str, str] = {} if group_id else {"ids": ",".join(map(str, ids))}
    query.update(metric=chosen_metric, x=chosen_x)
    toggled = dict(query)
    if not diff_only:
        query["diff"] = "0"
    else:
        toggled["diff"] = "0"
    stream_query = {"group": group_id} if group_id else {"ids": query["ids"]}
    stream = "/api/compare/stream?" + urlencode(stream_query, safe=",")
    return {
        "group_id": group_id,
        "ids": ids,
        "ids_csv": ",".join(map(str, ids)),
        "runs": runs,
        "metric": chosen_metric,
        "metric_options": options,
        "x": chosen_x,
        "x_options": [(key, X_LABELS[key]) for key in service.X_AXES],
        "config_rows": config_rows,
        "differing_count": len(differing),
        "diff_only": diff_only,
        "share_query": urlencode(query, safe=","),
        "toggle_query": urlencode(toggled, safe=","),
        "stream_url": stream,
        "page_data": {
            "ids": ids,
            "metric": chosen_metric,
            "x": chosen_x,
            "stream": stream,
            "runs": [
                {
                    "id": r["id"],
                    "name": r["name"],
                    "distinct": r["distinct"],
                    "colour": r["colour"],
                    "dash": r["dash"],
                }
                for r in runs
            ],
        },
    }


def _error_page(request: Request, exc: CompareError, title: str) -> HTMLResponse:
    html = templates.get_template("error.html").render(request=request, title=title, message=exc.message)
    return HTMLResponse(html, status_code=exc.status_code)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    metric: str | None = None,
    x: str | None = None,
    diff: str | None = None,
) -> Response:
    """Overlaid curves, summary and config differences of 2–8 runs: /compare?ids=1,2,3&metric=loss&x=step."""
    raw_ids = request.query_params.getlist("ids")
    try:
        ids = service.parse_ids(raw_ids)
        if len(raw_ids) > 1:
            # checkboxes send ids=9&ids=4 (list order): answer with the short, shareable form, oldest first
            query = {
                "ids": ",".join(map(str, sorted(ids))),
                **{k: v for k, v in request.query_params.items() if k != "ids"},
            }
            return RedirectResponse("/compare?" + urlencode(query, safe=","), status_code=303)
        service.check_count(ids)
        jobs = service.load_jobs(session, ids)
    except CompareError as exc:
        return _error_page(request, exc, "Cannot compare these runs")
    context = compare_context(session, jobs, metric=metric, x=x, diff=diff)
    return templates.TemplateResponse(request, "compare.html", context)


@router.get("/groups/{group_id}", response_class=HTMLResponse)
def group_page(
    request: Request,
    group_id: str,
    session: SessionDep,
    metric: str | None = None,
    x: str | None = None,
    diff: str | None = None,
) -> Response:
    """A sweep group: a live compare of all its members."""
    try:
        jobs = service.group_jobs(session, group_id)
    except CompareError as exc:
        return _error_page(request, exc, "Sweep group not found")
    context = compare_context(session, jobs, metric=metric, x=x, diff=diff, group_id=group_id)
    return templates.TemplateResponse(request, "compare.html", context)
