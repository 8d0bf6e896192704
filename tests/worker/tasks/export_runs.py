"""The 4-bit runs the export tests share, and a helper that runs the real `python -m worker.export` on them.

tiny Llama and tiny Gemma 3n, nf4, 4 steps: trained once per test session through tests.worker.training_runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from contract.protocol import ExitCode
from contract.tasks import export_name, read_export_status
from tests.worker.takeaway_run import preset_cache_dir
from tests.worker.training_runs import REPO, FinishedRun, child_env, demo_dict, trained_run

EXPORT_TIMEOUT_S = 600


def quantized_run(preset: str = "tiny-llama") -> FinishedRun:
    """A succeeded nf4 run of `preset` (adapter trained against the 4-bit base)."""
    cfg = demo_dict(max_steps=4, eval_steps=4, save_steps=4, batch_size=4)
    cfg["model"]["name"] = f"preset:{preset}"
    cfg["quantization"]["method"] = "nf4"
    cfg["dataset"]["num_rows"] = 32
    finished = trained_run(f"export-{preset}-nf4", cfg)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    return finished


def copy_run(run: FinishedRun, dest: Path) -> tuple[Path, Path]:
    """(a private copy of the run directory, the task input: the run's config as the app would store it)."""
    run_dir = dest / "run"
    shutil.copytree(run.run_dir.root, run_dir)
    task_input = dest / "task-input.json"
    task_input.write_text(run.run_dir.config.read_text(encoding="utf-8"), encoding="utf-8")
    return run_dir, task_input


def run_export(
    run: FinishedRun, run_dir: Path, task_input: Path, fmt: str, quant: str, base: str = "auto"
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the export child like the scheduler does; (the process, RUN_DIR/exports/NAME.json)."""
    argv = [sys.executable, "-m", "worker.export", str(run_dir), "--config", str(task_input)]
    argv += ["--format", fmt, "--quant", quant, "--base", base]
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=child_env(TUNEBOARD_CACHE_DIR=str(preset_cache_dir(run))),
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
    )
    status = read_export_status(run_dir, export_name(fmt, quant)) or {}
    return proc, status


def card_of(run_dir: Path, name: str) -> str:
    return (run_dir / "exports" / name / "README.md").read_text(encoding="utf-8")


def status_json(run_dir: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((run_dir / "exports" / f"{name}.json").read_text(encoding="utf-8")))
