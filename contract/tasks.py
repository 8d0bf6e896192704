"""Short worker-side tasks on a finished run: merged-model export and try-the-adapter generation.

Each runs as its own process (`python -m worker.tasks.merge RUN_DIR`, `python -m worker.tasks.generate
RUN_DIR ...`), never inside the web process. This module is torch-free: the app imports the file names and
the refusal text from here, so both sides agree on them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MERGED_DIR = "merged"  # RUN_DIR/merged: the merged model, renamed into place only when complete
MERGED_PARTIAL_DIR = "merged.partial"  # where the export writes before the rename
MERGE_STATUS = "merge.json"  # RUN_DIR/merge.json: {"state", "stage", "progress", "message", "pid", ...}
MERGE_LOG = "merge.log"  # stdout + stderr of the export process

# states of merge.json; "starting" is written by the app before the process exists
MERGE_STATES = ("starting", "running", "succeeded", "failed")


def merge_refusal(method: str) -> str | None:
    """Why a run quantized with `method` gets no merged export (None when merging is fine)."""
    if method == "none":
        return None
    bits = "8-bit" if method == "int8" else "4-bit"
    return (
        f"this adapter was trained on a {bits} ({method}) base, and merging LoRA weights into {bits} "
        "weights loses precision, so Tuneboard does not export a merged model for it. Train with "
        "quantization.method none to get a run that can be merged, or merge the adapter into the "
        "full-precision base yourself (PeftModel.from_pretrained on the unquantized base, then "
        "merge_and_unload())."
    )


def read_merge_status(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/merge.json, or None when no export was ever started (or the file is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / MERGE_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_merge_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Replace RUN_DIR/merge.json atomically with `fields` plus updated_at; return what was written."""
    body = {**fields, "updated_at": time.time()}
    path = Path(run_dir) / MERGE_STATUS
    tmp = path.with_name(f".{MERGE_STATUS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, path)
    return body
