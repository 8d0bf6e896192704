"""The divergence guard: decides, step by step, whether training has gone wrong. Torch-free.

Fed one (loss, grad_norm) pair per optimizer step by the guard callback
(worker/train/callbacks/divergence.py). It fires on:
- a non-finite loss or gradient norm;
- a loss of exactly 0.0 on non-trivial data (a collapsed loss, e.g. every label masked or fp16 underflow);
- a sustained gradient explosion: grad_norm above `grad_norm_factor` × the median of the last `window`
  finite norms for `patience` consecutive steps.

Large norms at the very start are normal (Gemma 3n starts with loss 6–7 and huge pre-clip norms), so the
spike test needs a few steps of history before it can fire. What happens next (stop, rollback, warn) is
the callback's job; the guard only says what it saw.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIN_HISTORY = 3  # finite norms needed before a spike can be judged at all


@dataclass(frozen=True)
class GuardVerdict:
    """Why the guard fired at one step."""

    step: int
    reason: str  # plain words for the run page
    kind: str  # "non_finite" | "zero_loss" | "grad_explosion" | preference kinds (worker/train/preference)
    detail: dict[str, Any] = field(default_factory=dict)
    warn_only: bool = False  # a hint (e.g. a data bug): reported as a warning whatever guard.policy says


class DivergenceGuard:
    """Watches loss and pre-clip grad_norm; `observe` returns a GuardVerdict when training diverges."""

    def __init__(self, *, grad_norm_factor: float = 20.0, patience: int = 3, window: int = 20) -> None:
        self.grad_norm_factor = grad_norm_factor
        self.patience = patience
        self.window = window
        self._norms: deque[float] = deque(maxlen=window)
        self._spikes = 0
        # More checks asked once a step, first (a preference run's log-probs, margins and accuracy:
        # worker/train/preference/guard.py); a loss of exactly 0 is healthy for some losses (DPO's hinge).
        self.checks: list[Callable[[int], GuardVerdict | None]] = []
        self.zero_loss_ok = False

    @classmethod
    def from_config(cls, guard_cfg: Any) -> DivergenceGuard:
        """Build from a contract.config.GuardConfig."""
        return cls(
            grad_norm_factor=guard_cfg.grad_norm_factor, patience=guard_cfg.patience, window=guard_cfg.window
        )

    def reset_streak(self) -> None:
        """Forget the current run of spikes (after a rollback the next steps are judged afresh)."""
        self._spikes = 0

    def observe(
        self, step: int, loss: float | None, grad_norm: float | None, *, trivial_data: bool = False
    ) -> GuardVerdict | None:
        """Judge one optimizer step; None when it looks healthy."""
        extra = [v for v in (check(step) for check in self.checks) if v is not None]
        if extra:
            if not extra[0].warn_only:
                self._spikes = 0
            return extra[0]
        bad = {
            k: v
            for k, v in (("loss", loss), ("grad_norm", grad_norm))
            if v is not None and not math.isfinite(v)
        }
        if bad:
            self._spikes = 0
            what = " and ".join(f"{k} is {v}" for k, v in bad.items())
            return GuardVerdict(
                step,
                f"non-finite values at step {step}: {what}",
                "non_finite",
                {k: str(v) for k, v in bad.items()},
            )
        if loss is not None and loss == 0.0 and not trivial_data and not self.zero_loss_ok:
            return GuardVerdict(
                step,
                f"the loss collapsed to exactly 0.0 at step {step}, which real data does not allow "
                "(check that labels are not all masked and that the dtype does not underflow)",
                "zero_loss",
                {"loss": 0.0},
            )
        if grad_norm is None:
            return None
        if len(self._norms) >= MIN_HISTORY:
            median = statistics.median(self._norms)
            if median > 0 and grad_norm > self.grad_norm_factor * median:
                self._spikes += 1
                # Spikes stay out of the history, so a long explosion cannot raise its own baseline.
                if self._spikes >= self.patience:
                    streak = self._spikes
                    self._spikes = 0
                    return GuardVerdict(
                        step,
                        f"gradient norm exploded: {grad_norm:.4g} at step {step} is more than "
                        f"{self.grad_norm_factor:g}× the recent median {median:.4g}, "
                        f"for {streak} steps in a row",
                        "grad_explosion",
                        {"grad_norm": grad_norm, "median": median, "steps": streak},
                    )
                return None
        self._spikes = 0
        self._norms.append(grad_norm)
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the guard."""
        return {"norms": list(self._norms), "spikes": self._spikes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from state_dict()."""
        self._norms = deque((float(x) for x in state.get("norms", [])), maxlen=self.window)
        self._spikes = int(state.get("spikes", 0))
