"""What a run's merged export is doing now, read from RUN_DIR/merge.json and checked against reality.

The export process writes merge.json as it goes; a process that died without a last word (app restart,
SIGKILL, a lost database) would leave it saying "running" forever, so a reading here also asks whether the
export is really still there and, when it is not, records it as failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.scheduler.tasks import task_process
from contract.tasks import MERGED_DIR, read_merge_status, write_merge_status

MERGE_MODULE = "worker.tasks.merge"
STARTING_GRACE_S = 30.0  # how long merge.json may say "starting" before the process has written its pid


def merge_status(run_dir: Path | None, *, active: bool | None = None) -> dict[str, Any]:
    """{"state": none|starting|running|succeeded|failed, "stage", "progress", "message"} of a run's export.

    Read from RUN_DIR/merge.json. `active` says whether the scheduler holds a queued or running export task
    for the job; an export that claims to run without one (app restart, SIGKILL, a lost database) is
    marked failed here, so the page never shows a spinner forever. Without `active` (no database at hand)
    the pid in merge.json decides.
    """
    if run_dir is None:
        return {"state": "none", "stage": "", "progress": 0.0, "message": ""}
    status = read_merge_status(run_dir)
    exported = (run_dir / MERGED_DIR).is_dir()
    if status is None:
        if exported:  # exported by hand or by an older app: still downloadable
            return {"state": "succeeded", "stage": "done", "progress": 1.0, "message": "merged model ready"}
        return {"state": "none", "stage": "", "progress": 0.0, "message": ""}
    state = status.get("state")
    if state in ("starting", "running"):
        if active is None:
            # "starting" is written by the app before the process exists (no pid yet): give it time
            young = (
                state == "starting" and time.time() - float(status.get("updated_at") or 0) < STARTING_GRACE_S
            )
            alive = young or _is_merge_process(status.get("pid"), run_dir)
        else:
            alive = active
        if not alive:
            gone: dict[str, Any] = {
                "state": "failed",
                "stage": "failed",
                "progress": 0.0,
                "message": "the export process is gone (the app restarted or it was killed); start it again",
            }
            try:
                status = write_merge_status(run_dir, **gone)
            except OSError:  # a read-only run directory: still say so, just without remembering it
                status = gone
    elif state == "succeeded" and not exported:
        status = {**status, "state": "none", "message": "the merged model was removed; export it again"}
    return {
        "state": status.get("state", "none"),
        "stage": status.get("stage", ""),
        "progress": float(status.get("progress") or 0.0),
        "message": status.get("message", ""),
    }


def _is_merge_process(pid: Any, run_dir: Path) -> bool:
    """Whether `pid` is alive and is a merge task for `run_dir` (guards against pid reuse)."""
    return task_process(pid, MERGE_MODULE, run_dir) is not None
