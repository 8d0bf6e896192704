"""Artifact uploads from remote workers: PUT /api/jobs/{id}/artifacts/{relative path}.

A worker on a Ray node that does not share DATA_DIR (app/scheduler/ray_launcher.py, remote mode) sends its
adapter, complete checkpoints and outcome.json here before it exits, so downloads and classification work
from the app as for a local job. It authenticates with the job's own token (as the event ingest does), only
while the job is active, and may only write below the allowed places of the job's RUN_DIR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from app.artifacts import ArtifactError, contained_path, plain_relative_path
from app.deps import JobDep, SessionDep, SettingsDep
from app.jobs.status import ACTIVE, JobStatus
from app.metrics.ingest import IngestError, authorize

router = APIRouter(prefix="/api", tags=["workers"])

# what a worker may write: its outputs, never config.json/job.json (the token) or the launcher's files
ALLOWED_DIRS = ("adapter", "checkpoints")
ALLOWED_FILES = ("outcome.json", "preflight.json", "plan.json")  # plan.json: the run plan (contract/plan.py)


def allowed_relative_path(relative: str) -> str:
    """The normalised relative path if a worker may upload it; ArtifactError with the reason otherwise."""
    parts = plain_relative_path(relative).split("/")
    if len(parts) == 1 and parts[0] in ALLOWED_FILES:
        return relative
    if len(parts) >= 2 and parts[0] in ALLOWED_DIRS:
        return relative
    raise ArtifactError(
        f"{relative!r} may not be uploaded: workers write only {', '.join(ALLOWED_FILES)} "
        f"and files under {'/, '.join(ALLOWED_DIRS)}/"
    )


@router.put("/jobs/{job_id}/artifacts/{relative:path}")
async def upload_artifact(
    relative: str,
    request: Request,
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Store the request body as RUN_DIR/<relative> (atomically); the job's bearer token is required."""
    try:
        authorize(session, job=job, authorization=authorization)
    except IngestError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    job_id, status, run_dir = job.id, job.status, job.run_dir
    # end the transaction now: on SQLite a PUT's session holds the write lock, which must not stay
    # taken while a large file streams in
    session.commit()
    if JobStatus(status) not in ACTIVE:
        raise HTTPException(409, f"job {job_id} is {status}; uploads are accepted only while its worker runs")
    if not run_dir:
        raise HTTPException(409, f"job {job_id} has no run directory yet; it has not been started")
    try:
        target = contained_path(Path(run_dir), allowed_relative_path(relative))
    except ArtifactError as exc:
        raise HTTPException(422, str(exc)) from None
    limit = settings.max_artifact_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"{relative} is {declared} bytes; the limit is {limit} (TUNEBOARD_MAX_ARTIFACT_BYTES)"
        )
    size = await _receive_to(target, request, limit, relative)
    return JSONResponse({"path": relative, "bytes": size}, status_code=201)


async def _receive_to(target: Path, request: Request, limit: int, relative: str) -> int:
    """Stream the body to a temporary file beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        413, f"{relative} is over the limit of {limit} bytes (TUNEBOARD_MAX_ARTIFACT_BYTES)"
                    )
                await anyio.to_thread.run_sync(out.write, chunk)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return size
