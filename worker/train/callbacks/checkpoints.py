"""The stop and checkpoint callback: a graceful stop at a step boundary, and checkpoints made resumable.

A stop request (SIGTERM/SIGINT, the dashboard's cancel, control.json: worker/train/signals.py) is honoured
at the next step end, unless the guard judged that step bad: that step is neither saved nor stopped on, so
the stop waits one step. Stopping asks the Trainer for a checkpoint first, then ends training. Once
training has ended (saving the adapter takes seconds) a signal only sets the flag and the run finishes.

A checkpoint becomes resumable only when `on_save` writes the COMPLETE marker, after the Trainer finished
writing the directory and after the guard's state (STATE_FILE) is in it; a kill before the marker leaves
a directory nobody resumes from (`remove_incomplete_checkpoints` clears it on the next start).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.config import JobConfig
from contract.protocol import EventKind
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, RunDir, complete_checkpoints
from worker.train.callbacks.divergence import GuardCallback
from worker.train.faults import maybe_kill_before_marker
from worker.train.log import say
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest

STATE_FILE = "tuneboard_state.json"  # guard and learning-rate state saved inside each checkpoint


class StopAndCheckpointCallback(TrainerCallback):
    """Honours stop requests at step ends (checkpoint first) and marks each saved checkpoint complete."""

    def __init__(
        self, *, cfg: JobConfig, run_dir: RunDir, reporter: Reporter, stop: StopRequest, guard: GuardCallback
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.reporter = reporter
        self.stop = stop  # under torchrun: the stop flag all ranks agreed on (worker/train/distributed.py)
        self.guard = guard
        self.cancelled = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.stop.in_training = True  # from now on a signal waits for the next step and a checkpoint

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.guard.verdict is not None or self.cancelled or not self.stop.is_set():
            return
        self.cancelled = True
        control.should_save = True  # a complete checkpoint, then a clean exit
        control.should_training_stop = True
        say(
            f"Stopping: {self.stop.reason}; saving a checkpoint first.",
            "warning",
            reporter=self.reporter,
            step=state.global_step,
        )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        ckpt = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        # Our state first, the marker last: a kill before the marker leaves a directory nobody resumes from.
        (ckpt / STATE_FILE).write_text(json.dumps(self.guard.state_dict()), encoding="utf-8")
        maybe_kill_before_marker(self.run_dir, state.global_step)
        _write_marker(ckpt / CHECKPOINT_COMPLETE_MARKER, state.global_step)
        prune_checkpoints(self.run_dir, self.cfg.training.save_total_limit)
        self.reporter.emit(
            EventKind.CHECKPOINT,
            state.global_step,
            {"path": f"checkpoints/{ckpt.name}", "step": state.global_step},
        )


def _write_marker(path: Path, step: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "completed_at": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())


def prune_checkpoints(run_dir: RunDir, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (and incomplete ones older than them)."""
    done = complete_checkpoints(run_dir)
    removed: list[Path] = []
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def remove_incomplete_checkpoints(run_dir: RunDir) -> list[Path]:
    """Delete checkpoint directories without the COMPLETE marker (left by a kill during a save)."""
    if not run_dir.checkpoints.is_dir():
        return []
    removed = []
    for child in run_dir.checkpoints.iterdir():
        if (
            child.is_dir()
            and child.name.startswith("checkpoint-")
            and not (child / CHECKPOINT_COMPLETE_MARKER).exists()
        ):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
