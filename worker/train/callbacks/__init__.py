"""The trainer callbacks, one trade each, and the one order they run in.

- divergence.GuardCallback: the divergence guard (warn / roll back and halve the lr / stop), NaN gradients
  dropped before the optimizer step;
- checkpoints.StopAndCheckpointCallback: a graceful stop at a step end, checkpoints marked complete;
- metrics.MetricsCallback: status, progress with ETA, the progress bar, METRIC events;
- samples.SampleCallback: sample generations after each evaluation.

The order is part of the behaviour: at a step end the guard judges the step first (a step it judged bad is
neither saved nor stopped on), then a pending stop asks for a checkpoint and the end, then the metrics
callback closes the step and reports progress, already knowing whether training ends. Under torchrun the
RankSyncCallback (worker/train/distributed.py) runs before all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.config import JobConfig
from contract.rundir import RunDir
from worker.train.callbacks.checkpoints import StopAndCheckpointCallback
from worker.train.callbacks.divergence import GuardCallback
from worker.train.callbacks.metrics import MetricsCallback, StepStats
from worker.train.callbacks.samples import SampleCallback
from worker.train.guard import GuardVerdict
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest


@dataclass
class TrainingCallbacks:
    """The run's callbacks, and what the run reads from them once training ends."""

    guard: GuardCallback
    stopper: StopAndCheckpointCallback
    metrics: MetricsCallback
    samples: SampleCallback

    def in_order(self) -> list[Any]:
        """The callbacks in the order the Trainer must call them."""
        return [self.guard, self.stopper, self.metrics, self.samples]

    @property
    def diverged(self) -> GuardVerdict | None:
        """The guard's verdict that ended the run, or None."""
        return self.guard.diverged

    @property
    def cancelled(self) -> bool:
        """True when a stop request ended training."""
        return self.stopper.cancelled

    @property
    def last_metrics(self) -> dict[str, float]:
        """The most recent value of each numeric metric reported."""
        return self.metrics.last_metrics

    @property
    def last_eval_step(self) -> int:
        """The step of the most recent evaluation (-1 when none)."""
        return self.metrics.last_eval_step

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (its STATE_FILE): the guard's state."""
        return self.guard.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's STATE_FILE."""
        self.guard.load_state_dict(state)


def training_callbacks(
    *,
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    stats: StepStats,
    stop: StopRequest,
    sampler: Any = None,  # callable(model) -> list[(prompt, completion)]
    progress_bar: bool = False,
) -> TrainingCallbacks:
    """The callbacks of one run, wired to its reporter, step stats and stop request."""
    guard = GuardCallback(cfg=cfg, run_dir=run_dir, reporter=reporter, stats=stats)
    return TrainingCallbacks(
        guard=guard,
        stopper=StopAndCheckpointCallback(
            cfg=cfg, run_dir=run_dir, reporter=reporter, stop=stop, guard=guard
        ),
        metrics=MetricsCallback(reporter=reporter, stats=stats, progress_bar=progress_bar),
        samples=SampleCallback(reporter=reporter, sampler=sampler),
    )
