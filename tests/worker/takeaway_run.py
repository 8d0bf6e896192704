"""The run the takeaway tests share: tiny Llama, quantization none (so it can be merged), 4 steps.

Trained once per test session through tests.worker.training_runs (the real `python -m worker.train`).
"""

from __future__ import annotations

import json
from pathlib import Path

from contract.protocol import ExitCode
from tests.worker.training_runs import FinishedRun, demo_dict, trained_run

TAKEAWAY_STEPS = 4


def mergeable_run() -> FinishedRun:
    """A succeeded run: complete checkpoints at steps 2 and 4, an adapter on a full-precision base."""
    cfg = demo_dict(max_steps=TAKEAWAY_STEPS, eval_steps=TAKEAWAY_STEPS, save_steps=2, batch_size=4)
    cfg["model"]["name"] = "preset:tiny-llama"
    cfg["quantization"]["method"] = "none"
    cfg["dataset"]["num_rows"] = 32
    finished = trained_run("takeaway-none", cfg)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    return finished


def preset_cache_dir(run: FinishedRun) -> Path:
    """The preset cache the training child used (so task children find the built preset, not rebuild it)."""
    quant = json.loads((run.run_dir.adapter / "tuneboard_quantization.json").read_text(encoding="utf-8"))
    return Path(quant["base_model"]).parent.parent  # <cache>/presets/<name>-v<N>
