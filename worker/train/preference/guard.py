"""What the divergence guard watches in a preference run, besides the loss and the gradient norm.

The trainer records each training micro-batch's metrics here; the guard (worker/train/guard.py) asks
`check` once per optimizer step. It fires on:
- non-finite log-probabilities (the policy's or the reference's): follows guard.policy;
- runaway margins: the mean reward margin beyond preference.max_reward_margin, i.e. the model pushes the
  rejected answers towards probability zero instead of learning the preference: follows guard.policy;
- reward accuracy exactly 0 or exactly 1 on every step from step 1 for STUCK_STEPS steps: a hint of a data
  bug, reported once as a warning whatever the policy (rolling back cannot fix data).
"""

from __future__ import annotations

import math
from typing import Any

from worker.train.guard import GuardVerdict
from worker.train.preference.trainer import FINITE_KEY

STUCK_STEPS = 10  # steps of exactly-0 or exactly-1 accuracy, from step 1, before the data hint


class PreferenceMonitor:
    """Per-step preference metrics for the guard."""

    def __init__(self, max_margin: float) -> None:
        self.max_margin = max_margin
        self._micro: list[dict[str, Any]] = []
        self.accuracies: list[float] = []  # one per step since step 1 (while still judged)
        self.hinted = False

    def record(self, metrics: dict[str, Any]) -> None:
        """One training micro-batch's metrics (tensors, read at the step's end)."""
        self._micro.append(
            {k: v for k, v in metrics.items() if k in (FINITE_KEY, "rewards/margins", "rewards/accuracies")}
        )

    def _mean(self, key: str) -> float | None:
        values = [float(m[key]) for m in self._micro if key in m]
        return sum(values) / len(values) if values else None

    def check(self, step: int) -> GuardVerdict | None:
        """The verdict on the step that just ended (None: it looked healthy)."""
        finite, margin, accuracy = (
            self._mean(FINITE_KEY),
            self._mean("rewards/margins"),
            self._mean("rewards/accuracies"),
        )
        self._micro = []
        if finite is not None and finite < 1.0:
            return GuardVerdict(
                step,
                f"the log-probabilities of the answers became NaN or infinite at step {step}: the model "
                "gives an answer token zero probability or its numbers overflowed",
                "non_finite_logps",
            )
        if margin is not None and (not math.isfinite(margin) or abs(margin) > self.max_margin):
            return GuardVerdict(
                step,
                f"the reward margin ran away: {margin:.4g} at step {step} is beyond "
                f"preference.max_reward_margin {self.max_margin:g}; the model is pushing the rejected "
                "answers towards probability zero rather than learning the preference (lower the "
                "learning rate or raise preference.beta)",
                "runaway_margin",
                {"margin": margin},
            )
        return self._stuck(step, accuracy)

    def _stuck(self, step: int, accuracy: float | None) -> GuardVerdict | None:
        if self.hinted or accuracy is None:
            return None
        if accuracy not in (0.0, 1.0) or (self.accuracies and accuracy != self.accuracies[0]):
            self.hinted = True  # it moved: nothing to say, ever
            return None
        self.accuracies.append(accuracy)
        if len(self.accuracies) < STUCK_STEPS:
            return None
        self.hinted = True
        word = "0 (the rejected answer always scores at least as high)" if accuracy == 0.0 else "1"
        return GuardVerdict(
            step,
            f"reward accuracy has been exactly {word} on every step since step 1: that usually means a data "
            "problem rather than learning. Check that chosen and rejected are not swapped or identical, and "
            "that training.max_seq_len does not cut the answers off",
            "stuck_accuracy",
            {"accuracy": accuracy, "steps": len(self.accuracies)},
            warn_only=True,
        )
