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
        "weights loses precision, so this button does not merge it. Use Exports instead (the merged "
        "format, or `tuneboard export JOB --format merged`): it folds the adapter into the dequantized "
        "base it was trained against, or the full-precision base, and checks the result against the "
        "adapter. Or train with quantization.method none to get a run that can be merged here."
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


# ------------------------------------------------------------------------------------------- exports
# `python -m worker.export RUN_DIR --config C --format F [--quant Q] [--base B]` writes RUN_DIR/exports/NAME/
# (renamed from NAME.partial only when complete and within its parity tolerance) and reports in
# RUN_DIR/exports/NAME.json: {"state", "stage", "progress", "message", "pid", "parity", "files", "base", ...}.

EXPORT_MODULE = "worker.export"
EXPORTS_DIR = "exports"
EXPORT_LOG = "export.log"  # RUN_DIR/exports/export.log: stdout + stderr of the export processes
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "merged": ("model",),  # Hugging Face safetensors in the training dtype
    "gguf": ("f16", "bf16", "q8_0", "q4_k_m"),  # the merged model for llama.cpp / Ollama
    "gguf-lora": ("f16",),  # the adapter alone, to apply on a GGUF of its base
}
DEFAULT_QUANT = {"merged": "model", "gguf": "q4_k_m", "gguf-lora": "f16"}
# which weights the adapter is folded into: the dequantized 4-bit base it was trained against, or the
# full-precision checkpoint of the base ("auto": dequantized for quantized runs, else full)
EXPORT_BASES = ("auto", "dequantized", "full")
EXPORT_STATES = ("starting", "running", "succeeded", "failed")


class ExportRequestError(ValueError):
    """An export request names an unknown format, quantization or base; the message lists the known ones."""


def export_name(fmt: str, quant: str | None = None) -> str:
    """The export's folder name under RUN_DIR/exports: merged, gguf-q4_k_m, gguf-lora-f16."""
    if fmt not in EXPORT_FORMATS:
        raise ExportRequestError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    quant = quant or DEFAULT_QUANT[fmt]
    if quant not in EXPORT_FORMATS[fmt]:
        known = ", ".join(EXPORT_FORMATS[fmt])
        raise ExportRequestError(f"format {fmt} has no quantization {quant!r}; choose one of {known}")
    return "merged" if fmt == "merged" else f"{fmt}-{quant}"


def parse_export_name(name: str) -> tuple[str, str]:
    """(format, quant) of a folder name made by export_name (ExportRequestError for anything else)."""
    for fmt, quants in EXPORT_FORMATS.items():
        for quant in quants:
            if export_name(fmt, quant) == name:
                return fmt, quant
    raise ExportRequestError(f"{name!r} is not an export of this version")


def all_export_names() -> list[str]:
    """Every export folder name, in the order the page lists them."""
    return [export_name(fmt, quant) for fmt, quants in EXPORT_FORMATS.items() for quant in quants]


def export_status_path(run_dir: Path, name: str) -> Path:
    """RUN_DIR/exports/NAME.json."""
    return Path(run_dir) / EXPORTS_DIR / f"{name}.json"


def read_export_status(run_dir: Path, name: str) -> dict[str, Any] | None:
    """RUN_DIR/exports/NAME.json, or None when that export never started (or the file is unreadable)."""
    try:
        data = json.loads(export_status_path(run_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_export_status(run_dir: Path, name: str, **fields: Any) -> dict[str, Any]:
    """Replace RUN_DIR/exports/NAME.json atomically with `fields` plus updated_at; return what was written."""
    body = {**fields, "name": name, "updated_at": time.time()}
    path = export_status_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, path)
    return body


def export_name_of(args: Any) -> str | None:
    """The export (RUN_DIR/exports/NAME) an export task's args produce, None if they name none."""
    try:
        argv = list(args or [])
        return export_name(argv[argv.index("--format") + 1], argv[argv.index("--quant") + 1])
    except (ValueError, IndexError, ExportRequestError):
        return None


def fail_export_file(run_dir: Path, name: str | None, reason: str) -> None:
    """Make RUN_DIR/exports/NAME.json say failed unless it already says how it ended."""
    if name is None:
        return
    status = read_export_status(run_dir, name) or {}
    if status.get("state") in ("failed", "succeeded"):
        return
    try:
        write_export_status(run_dir, name, state="failed", stage="failed", progress=0.0, message=reason)
    except OSError:
        pass  # a read-only run directory: the task row still says why


def export_succeeded(run_dir: Path, name: str | None) -> bool:
    """Whether export NAME says it succeeded and its folder is there."""
    if name is None:
        return False
    status = read_export_status(run_dir, name) or {}
    return status.get("state") == "succeeded" and (run_dir / EXPORTS_DIR / name).is_dir()


def export_failure(run_dir: Path, name: str | None) -> str | None:
    """The export's own account of why it failed (None unless NAME.json says failed with a message)."""
    status = read_export_status(run_dir, name) if name else None
    if status and status.get("state") == "failed" and status.get("message"):
        return str(status["message"])
    return None
