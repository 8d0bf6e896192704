"""The guard callback: the divergence guard's verdicts acted on, per guard.policy (warn, rollback, stop).

Each step end it feeds the step's loss and pre-clip gradient norm (from the StepStats) to the
DivergenceGuard (worker/train/guard.py). A rollback restores the last complete checkpoint's adapter and
optimizer state (or the adapter as initialised, before the first checkpoint) and halves the learning
rate; a stop ends training with `diverged` set. Before every optimizer step it drops a NaN/inf gradient,
so the optimizer skips that step. Its state (rollbacks, learning-rate scale, guard history) is saved in
each checkpoint by the checkpoint callback and restored on resume.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.config import JobConfig
from contract.protocol import EventKind
from contract.rundir import RunDir, complete_checkpoints
from worker.train.callbacks.metrics import StepStats
from worker.train.guard import DivergenceGuard, GuardVerdict
from worker.train.reporter import Reporter


class GuardCallback(TrainerCallback):
    """Runs the divergence guard each step and acts on its verdict: warn, roll back, or stop."""

    def __init__(self, *, cfg: JobConfig, run_dir: RunDir, reporter: Reporter, stats: StepStats) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.reporter = reporter
        self.stats = stats
        self.guard = DivergenceGuard.from_config(cfg.guard)
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.diverged: GuardVerdict | None = None  # set when the guard ended the run
        self.verdict: GuardVerdict | None = None  # this step's verdict (None: the step looked fine)
        self._initial_state: dict[str, Any] | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is not None and self._initial_state is None:
            # Rollback target before the first checkpoint exists: the adapter as initialised (small).
            self._initial_state = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A NaN/inf gradient would poison every weight it touches; drop it so the optimizer skips this step.
        if not self.stats.step_is_finite():
            model = kwargs.get("model")
            if model is not None:
                for p in model.parameters():
                    p.grad = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # read, not closed: the metrics callback closes the step into its logging window after us
        self.verdict = self.guard.observe(state.global_step, self.stats.step_loss(), self.stats.grad_norm)
        if self.verdict is not None:
            self._on_guard(self.verdict, control, kwargs)
            if self.verdict.warn_only:
                self.verdict = None  # a hint: the step itself is fine to save and stop on

    def _on_guard(self, verdict: GuardVerdict, control: TrainerControl, kwargs: dict[str, Any]) -> None:
        policy = "warn" if verdict.warn_only else self.cfg.guard.policy
        if not verdict.warn_only:  # a hint about the data judges no step bad
            # Never checkpoint or evaluate a step the guard just judged bad.
            control.should_save = False
            control.should_evaluate = False
        if policy == "warn":
            self._guard_event(verdict, "warn", {})
            return
        if policy == "rollback" and self.rollbacks < self.cfg.guard.max_rollbacks:
            source = self._rollback(kwargs)
            self.rollbacks += 1
            self.guard.reset_streak()
            lr = [g["lr"] for g in _inner(kwargs["optimizer"]).param_groups]
            self._guard_event(
                verdict,
                "rollback",
                {
                    "restored": source,
                    "rollbacks": self.rollbacks,
                    "lr_scale": self.lr_scale,
                    "learning_rate": lr[0],
                },
            )
            return
        extra = {}
        if policy == "rollback":
            extra["note"] = f"max_rollbacks ({self.cfg.guard.max_rollbacks}) reached; stopping"
        self.diverged = verdict
        control.should_training_stop = True
        self._guard_event(verdict, "stop", extra)

    def _guard_event(self, verdict: GuardVerdict, action: str, extra: dict[str, Any]) -> None:
        detail = {"kind": verdict.kind, **verdict.detail, **extra}
        self.reporter.emit(
            EventKind.GUARD, verdict.step, {"reason": verdict.reason, "action": action, "detail": detail}
        )

    def _rollback(self, kwargs: dict[str, Any]) -> str:
        """Restore the last complete checkpoint's adapter and optimizer state, then halve the lr."""
        import torch

        model = kwargs["model"]
        optimizer = kwargs["optimizer"]
        scheduler = kwargs.get("lr_scheduler")
        ckpts = complete_checkpoints(self.run_dir)
        if ckpts:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            ckpt = ckpts[-1]
            weights = load_file(str(ckpt / "adapter_model.safetensors"), device=str(_device_of(model)))
            set_peft_model_state_dict(model, weights)
            opt_file = ckpt / "optimizer.pt"
            if opt_file.is_file():
                optimizer.load_state_dict(
                    torch.load(opt_file, map_location=_device_of(model), weights_only=False)
                )
            source = f"checkpoints/{ckpt.name}"
        else:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, value in (self._initial_state or {}).items():
                    params[name].copy_(value)
            _inner(optimizer).state.clear()  # back to a fresh optimizer, as at step 0
            source = "initial adapter (no checkpoint yet)"
        self._scale_lr(optimizer, scheduler, 0.5)
        return source

    def _scale_lr(self, optimizer: Any, scheduler: Any, factor: float) -> None:
        self.lr_scale *= factor
        for group in _inner(optimizer).param_groups:
            group["lr"] *= factor
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the torch scheduler
        if inner is not None and hasattr(inner, "base_lrs"):
            # LambdaLR recomputes lr = base_lr × factor(step) each step: scale the base too, and the
            # last computed value, which the Trainer logs for the next step.
            inner.base_lrs = [b * factor for b in inner.base_lrs]
            if hasattr(inner, "_last_lr"):
                inner._last_lr = [v * factor for v in inner._last_lr]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the guard (rollback count, learning-rate scale, guard history)."""
        return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's STATE_FILE (the scheduler's own state already carries the lr scale)."""
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.guard.load_state_dict(state.get("guard", {}))


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _device_of(model: Any) -> Any:
    return next(p.device for p in model.parameters())
