"""REST route for sweeps (under /api)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import JobDep, SessionDep
from app.jobs.api import ConfigBody
from app.sweeps.service import SweepError, create_sweep

router = APIRouter(prefix="/api", tags=["sweeps"])


_SWEEP_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "One or two dotted config fields, each with a non-empty list of values.",
                "minProperties": 1,
                "maxProperties": 2,
                "additionalProperties": {"type": "array", "minItems": 1},
            },
            "example": {"training.learning_rate": [1e-4, 2e-4], "lora.r": [8, 16]},
        }
    },
}


@router.post("/jobs/{job_id}/sweep", status_code=201, openapi_extra={"requestBody": _SWEEP_BODY})
def sweep_job(job: JobDep, session: SessionDep, body: ConfigBody) -> JSONResponse:
    """Queue a grid of copies of this job: {"training.learning_rate": [1e-4, 2e-4], "lora.r": [8, 16]}.

    201 {"group_id", "job_ids"}; 422 {"detail", "problems": {field: message}} naming the bad field and
    value, with no job created (also above 32 jobs or more than two fields).
    """
    try:
        axes: Any = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return JSONResponse(
            {"detail": f"the body is not valid JSON: {exc}", "problems": {"": "send a JSON object"}},
            status_code=422,
        )
    try:
        group_id, jobs = create_sweep(session, job=job, axes=axes)
    except SweepError as exc:
        return JSONResponse({"detail": exc.message, "problems": exc.problems}, status_code=422)
    return JSONResponse({"group_id": group_id, "job_ids": [j.id for j in jobs]}, status_code=201)
