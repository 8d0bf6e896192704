"""The user's own experiment trackers (`report_to`): W&B, MLflow, TensorBoard and Trackio get the metrics.

`start_trackers` is what the run calls before training and closes after it (worker/train/training.py).
The forwarder (forwarder.py) sends the same METRIC events the dashboard gets from a background thread, so
the training loop never waits on a tracker; backends.py holds one small adapter per tracker. A tracker that
fails is dropped with one warning and never fails the run. docs/trackers.md says where each one writes.
"""

from __future__ import annotations

from typing import Any

from contract.config import JobConfig, config_to_dict
from contract.rundir import RunDir
from worker.train.trackers.backends import RunContext
from worker.train.trackers.forwarder import Forwarder, trackers_dir


class NoTrackers:
    """What a run without `report_to` (or a rank other than 0) gets: nothing to close."""

    dropped: dict[str, str] = {}

    def close(self, *, failed: bool) -> None:
        """Nothing to end."""


def run_name(cfg: JobConfig, run_dir: RunDir, reporter: Any) -> str:
    """tracking.run_name, else the job's name, else job-<id>, else the run folder's name."""
    job = getattr(reporter, "job", None)
    if cfg.tracking.run_name.strip():
        return cfg.tracking.run_name.strip()
    if cfg.name.strip():
        return cfg.name.strip()
    if isinstance(job, dict) and job.get("job_id") is not None:
        return f"job-{job['job_id']}"
    return run_dir.root.name


def start_trackers(cfg: JobConfig, run_dir: RunDir, reporter: Any, *, main_rank: bool = True) -> Any:
    """A started Forwarder for cfg.report_to, or NoTrackers when it names none (or on another rank)."""
    if not cfg.report_to or not main_rank:
        return NoTrackers()
    ctx = RunContext(
        root=trackers_dir(run_dir),
        project=cfg.tracking.project,
        run_name=run_name(cfg, run_dir, reporter),
        config=config_to_dict(cfg),
    )
    return Forwarder(list(cfg.report_to), ctx, run_dir, reporter).start()
