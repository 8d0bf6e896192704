"""The run directory: every file the app and a training process exchange, named once.

Same layout for local and remote workers. The app writes config.json, job.json, owner.json and app_url; the
worker writes the rest. Torch-free: both sides import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FULL_LOG_NAME = "train.log"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one job's run directory. Same layout for local and remote workers."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"  # the validated JobConfig (canonical JSON)

    @property
    def job(self) -> Path:
        return self.root / "job.json"  # {"job_id", "app_url", "token"} — absent for standalone runs

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"  # the spool: one JSON event per line, seq increasing

    @property
    def outcome(self) -> Path:
        return self.root / "outcome.json"  # written last by the worker: {"status", "reason", "exit_code"}

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"  # bounded tail of the child's stderr (written by the launcher)

    @property
    def full_log(self) -> Path:
        return self.root / FULL_LOG_NAME  # the training process's log: messages, library warnings, tracebacks

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"  # checkpoint-<step>/ each, COMPLETE marker written last

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"  # final PEFT adapter + tokenizer + README.md model card

    @property
    def control(self) -> Path:
        return self.root / "control.json"  # {"cancel": true} written by a launcher that cannot signal

    @property
    def app_url(self) -> Path:
        # the address of the app that supervises the run now, one line, written by the app at launch and
        # when a standby takes over; the worker only reads it (and follows it when its posts fail)
        return self.root / "app_url"

    @property
    def plan(self) -> Path:
        # how the run computes (contract/plan.py): written by the worker before training, read on resume
        return self.root / "plan.json"

    @property
    def owner(self) -> Path:
        return self.root / "owner.json"  # {"job_id", "run"}: written by the app when it makes the directory


CHECKPOINT_COMPLETE_MARKER = "COMPLETE"


def complete_checkpoints(run_dir: RunDir) -> list[Path]:
    """Checkpoint directories whose completeness marker exists, oldest first."""
    if not run_dir.checkpoints.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for child in run_dir.checkpoints.iterdir():
        if not child.name.startswith("checkpoint-") or not (child / CHECKPOINT_COMPLETE_MARKER).is_file():
            continue
        try:
            found.append((int(child.name.split("-", 1)[1]), child))
        except ValueError:
            continue
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(run_dir: RunDir) -> Path | None:
    """The newest resumable checkpoint, or None."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None
