"""Exports of a finished job as scheduled tasks: queue one, read what each export is doing, list its files.

An export is a `task` row of kind "export" (`python -m worker.export RUN_DIR --config C --format F --quant
Q --base B`) placed, launched, watched, cancelled and re-attached after a restart by the scheduler like a
merged export (app/scheduler/tasks.py). The worker reports in RUN_DIR/exports/NAME.json and publishes
RUN_DIR/exports/NAME/ only when the export passed its parity check.

RUN_DIR is worker-writable, so nothing read from it is trusted: the files offered are the regular files
directly inside RUN_DIR/exports/NAME/ (no links, nothing outside), their sizes come from the file system
and their sha256 is computed here (cached by path, size and modification time), never copied from NAME.json.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.status import JobStatus
from app.models import Job, Task
from app.scheduler.tasks import task_process
from app.tasks.manager import WAITING_IDS, TaskBusy, TaskManager
from contract.tasks import (
    EXPORT_LOG,
    EXPORT_MODULE,
    EXPORTS_DIR,
    ExportRequestError,
    all_export_names,
    export_name,
    parse_export_name,
    read_export_status,
    write_export_status,
)

STARTING_GRACE_S = 30.0
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()
PUBLIC_STATUS_KEYS = ("state", "stage", "progress", "message", "base", "base_words", "parity")


def export_args(fmt: str, quant: str, base: str, config_path: str) -> list[str]:
    """The task row's args after RUN_DIR (what the scheduler runs)."""
    return ["--config", config_path, "--format", fmt, "--quant", quant, "--base", base]


def name_of_args(args: list[str] | tuple[str, ...]) -> str | None:
    """The export name a task row's args produce (None if they do not name one)."""
    try:
        fmt = args[list(args).index("--format") + 1]
        quant = args[list(args).index("--quant") + 1]
        return export_name(fmt, quant)
    except (ValueError, IndexError, ExportRequestError):
        return None


def active_export(session: Session, job_id: int) -> Task | None:
    """The job's queued or running export task, if any."""
    query = select(Task).where(Task.job_id == job_id, Task.kind == "export", Task.status.in_(WAITING_IDS))
    return session.scalars(query.order_by(Task.id.desc()).limit(1)).first()


def sha256_of(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime): computed by the app, never taken from the worker."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[key] = value
    return value


def export_files(run_dir: Path, name: str) -> list[Path]:
    """The regular files directly inside RUN_DIR/exports/NAME (links and folders left out)."""
    folder = run_dir / EXPORTS_DIR / name
    if folder.is_symlink() or not folder.is_dir():
        return []
    root = folder.resolve()
    return sorted(
        p for p in folder.iterdir() if not p.is_symlink() and p.is_file() and p.resolve().parent == root
    )


def export_file(run_dir: Path, name: str, filename: str) -> Path | None:
    """One published file of a succeeded export, or None."""
    for path in export_files(run_dir, name):
        if path.name == filename:
            return path
    return None


def export_status(
    job: Job, name: str, *, active_name: str | None, with_digests: bool = True
) -> dict[str, Any]:
    """What one export of `job` is doing, checked against reality, plus its files when it succeeded."""
    fmt, quant = parse_export_name(name)
    body: dict[str, Any] = {"name": name, "format": fmt, "quant": quant, "state": "none", "stage": ""}
    body.update({"progress": 0.0, "message": "", "files": []})
    run_dir = Path(job.run_dir) if job.run_dir else None
    status = read_export_status(run_dir, name) if run_dir else None
    if run_dir is None or status is None:
        return body
    body.update({k: status[k] for k in PUBLIC_STATUS_KEYS if k in status})
    state = status.get("state")
    if state in ("starting", "running") and active_name != name:
        young = state == "starting" and time.time() - float(status.get("updated_at") or 0) < STARTING_GRACE_S
        alive = young or task_process(status.get("pid"), EXPORT_MODULE, run_dir) is not None
        if not alive:
            gone = "the export process is gone (the app restarted or it was cancelled); start it again"
            body.update({"state": "failed", "stage": "failed", "progress": 0.0, "message": gone})
            try:
                write_export_status(run_dir, name, state="failed", stage="failed", progress=0.0, message=gone)
            except OSError:
                pass
    files = export_files(run_dir, name) if body["state"] == "succeeded" else []
    if body["state"] == "succeeded" and not files:
        body.update({"state": "none", "message": "the export's files were removed; export it again"})
    body["files"] = [
        {
            "name": p.name,
            "size": p.stat().st_size,
            "sha256": sha256_of(p) if with_digests else None,
            "download_url": f"/api/jobs/{job.id}/exports/{name}/files/{p.name}",
        }
        for p in files
    ]
    return body


def job_exports(job: Job, session: Session | None, *, active: bool | None = None) -> list[dict[str, Any]]:
    """Every export of the job (those never started say state none), in the page's order."""
    active_name = None
    if session is not None:
        task = active_export(session, job.id)
        active_name = name_of_args(task.args) if task is not None else None
    return [export_status(job, name, active_name=active_name) for name in all_export_names()]


def exports_context(job: Job, session: Session | None) -> dict[str, Any]:
    """What the page's Exports box shows (part of takeaway_context)."""
    task = active_export(session, job.id) if session is not None else None
    active_name = name_of_args(task.args) if task is not None else None
    return {
        "exports": [export_status(job, n, active_name=active_name) for n in all_export_names()],
        "export_busy": task is not None,
    }


async def start_export(
    manager: TaskManager,
    job: Job,
    *,
    config: dict[str, Any],
    fmt: str,
    quant: str,
    base: str,
    session: Session | None = None,
) -> str:
    """Queue one export of `job` with the scheduler; return its name (TaskBusy when the job has a task)."""
    assert job.run_dir is not None
    run_dir = Path(job.run_dir)
    name = export_name(fmt, quant)
    claim = manager.claim(job.id, "export", manager.settings.merge_timeout_s)
    try:
        if session is not None and active_export(session, job.id) is not None:
            raise TaskBusy(f"job {job.id} is already exporting; wait for it to finish or cancel it")
        write_export_status(
            run_dir,
            name,
            state="starting",
            stage="starting",
            progress=0.0,
            message="waiting for the scheduler to start the export process",
            format=fmt,
            quant=quant,
        )
    except BaseException:
        manager.release(claim)
        raise
    await manager.queue_claimed(
        claim,
        run_dir,
        config=config,
        kind="export",
        module=manager.export_module,
        args=lambda path: export_args(fmt, quant, base, path),
        log_path=run_dir / EXPORTS_DIR / EXPORT_LOG,
        session=session,
    )
    return name


def cancel_export(manager: TaskManager, session: Session, job: Job, name: str) -> bool:
    """Ask the scheduler to stop the job's running export `name`; False when it has none running."""
    task = active_export(session, job.id)
    if task is None or name_of_args(task.args) != name:
        return False
    if task.status == JobStatus.QUEUED.value:
        task.status = JobStatus.CANCELLED.value
        task.failure_reason = "cancelled before it started"
        if job.run_dir:
            write_export_status(
                Path(job.run_dir), name, state="failed", stage="cancelled", progress=0.0, message="cancelled"
            )
    else:
        task.status = JobStatus.CANCELLING.value
    return True
