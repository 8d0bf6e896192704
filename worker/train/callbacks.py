"""The trainer callback: metrics, progress, samples, checkpoint completeness, divergence guard, graceful stop.

Everything the callback says goes through `Reporter.emit` (a file append and a queue put), so a step never
waits on the network. Checkpoints become resumable only when `on_save` writes the COMPLETE marker, after
the Trainer finished writing the directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.config import JobConfig
from contract.protocol import EventKind, encode_number
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, RunDir, complete_checkpoints
from worker.train.guard import DivergenceGuard, GuardVerdict
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest

STATE_FILE = "tuneboard_state.json"  # guard and learning-rate state saved inside each checkpoint
# Test hook: SIGKILL this process after checkpoint-N's files are written and before its COMPLETE marker,
# once per run directory (a relaunch passes step N again and must then save). Never set it for real runs.
INJECT_KILL_BEFORE_MARKER_ENV = "TUNEBOARD_INJECT_KILL_BEFORE_MARKER_AT_STEP"
GB = 1024**3


@dataclass
class StepStats:
    """Per-optimizer-step numbers the Trainer subclass records for the callback."""

    micro_losses: list[Any] = field(default_factory=list)  # floats, or detached 0-d tensors not yet read
    grad_norm: float | None = None
    tokens_seen: int = 0
    window_losses: list[float] = field(default_factory=list)  # step losses since the last log
    window_tokens: int = 0
    window_started: float = field(default_factory=time.monotonic)

    def add_micro(self, loss: Any, tokens: int) -> None:
        """Record one micro-batch: its loss (already divided by the accumulation steps) and real tokens.

        `loss` may be a detached tensor on the GPU: it is read once per optimizer step, in `step_loss`, so
        recording a micro-batch never makes the CPU wait for the GPU to finish the queued work.
        """
        self.micro_losses.append(loss)
        self.tokens_seen += tokens
        self.window_tokens += tokens

    def step_loss(self) -> float | None:
        """The loss of the optimizer step in progress (sum of the accumulation-scaled micro losses)."""
        if not self.micro_losses:
            return None
        read = (int, float)
        pending = [x for x in self.micro_losses if not isinstance(x, read)]
        if pending:
            import torch

            values = iter(torch.stack([x.reshape(()) for x in pending]).double().tolist())  # one sync
            self.micro_losses = [x if isinstance(x, read) else next(values) for x in self.micro_losses]
        return math.fsum(self.micro_losses)

    def step_is_finite(self) -> bool:
        """False when this step's loss or gradient norm is NaN or infinite."""
        loss = self.step_loss()
        return (loss is None or math.isfinite(loss)) and (
            self.grad_norm is None or math.isfinite(self.grad_norm)
        )

    def close_step(self) -> None:
        """Move the finished step's loss into the logging window."""
        loss = self.step_loss()
        if loss is not None:
            self.window_losses.append(loss)
        self.micro_losses = []

    def take_window(self) -> tuple[float | None, float | None]:
        """(mean loss, tokens per second) since the last call, then reset the window."""
        now = time.monotonic()
        elapsed = now - self.window_started
        loss = sum(self.window_losses) / len(self.window_losses) if self.window_losses else None
        tps = self.window_tokens / elapsed if elapsed > 0 else None
        self.window_losses, self.window_tokens, self.window_started = [], 0, now
        return loss, tps


def memory_metrics() -> dict[str, float]:
    """VRAM (and GPU utilisation/power when NVML is there) on GPU; resident set size on CPU."""
    import torch

    out: dict[str, float] = {}
    if torch.cuda.is_available():
        out["vram_allocated_gb"] = torch.cuda.memory_allocated() / GB
        out["vram_reserved_gb"] = torch.cuda.memory_reserved() / GB
        out["vram_peak_gb"] = torch.cuda.max_memory_allocated() / GB
        out.update(_nvml_metrics(torch.cuda.current_device()))
    else:
        try:
            import psutil

            out["rss_gb"] = psutil.Process().memory_info().rss / GB
        except ImportError:
            pass
    return out


_NVML_HANDLES: dict[int, Any] = {}


def _nvml_handle(index: int) -> Any:
    """The NVML handle of torch's device `index` (NVML counts physical GPUs), opened once."""
    import pynvml

    if index not in _NVML_HANDLES:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        physical = int(ids[index]) if index < len(ids) and ids[index].isdigit() else index
        _NVML_HANDLES[index] = pynvml.nvmlDeviceGetHandleByIndex(physical)
    return _NVML_HANDLES[index]


def _nvml_metrics(index: int) -> dict[str, float]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        handle = _nvml_handle(index)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        power_mw = pynvml.nvmlDeviceGetPowerUsage(handle)
        return {"gpu_util": float(util.gpu), "gpu_power_w": power_mw / 1000.0}
    except Exception:  # NVML missing or unsupported on this driver: the other metrics still flow
        return {}


def _number(value: Any) -> float | str:
    return encode_number(float(value))


class TuneboardCallback(TrainerCallback):
    """Reports metrics/progress/samples/checkpoints, runs the divergence guard and honours stop requests."""

    def __init__(
        self,
        *,
        cfg: JobConfig,
        run_dir: RunDir,
        reporter: Reporter,
        stats: StepStats,
        stop: StopRequest,
        sampler: Any = None,  # callable(model) -> list[(prompt, completion)]
        progress_bar: bool = False,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.reporter = reporter
        self.stats = stats
        self.stop = stop
        self.sampler = sampler
        self.progress_bar = progress_bar
        self.guard = DivergenceGuard.from_config(cfg.guard)
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.diverged: GuardVerdict | None = None  # set when the guard ended the run
        self.cancelled = False
        self.last_metrics: dict[str, float] = {}
        self._bar: Any = None
        self._started = 0.0
        self._start_step = 0
        self._initial_state: dict[str, Any] | None = None
        self._last_eval_step = -1

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is not None and self._initial_state is None:
            # Rollback target before the first checkpoint exists: the adapter as initialised (small).
            self._initial_state = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }
        self.stop.in_training = True  # from now on a signal waits for the next step and a checkpoint
        self._started = time.monotonic()
        self._start_step = state.global_step
        self.stats.window_started = time.monotonic()
        if not state.is_world_process_zero:
            return
        self.reporter.emit(
            EventKind.STATUS, state.global_step, {"status": "running", "total_steps": int(state.max_steps)}
        )
        if self.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Saving the adapter takes seconds: a signal now only sets the flag and the run finishes.
        if self._bar is not None:
            self._bar.close()
            self._bar = None

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
        step = state.global_step
        loss = self.stats.step_loss()
        grad_norm = self.stats.grad_norm
        self.stats.close_step()
        verdict = self.guard.observe(step, loss, grad_norm)
        if verdict is not None:
            self._on_guard(verdict, control, kwargs)
        elif self.stop.is_set() and not self.cancelled:
            self.cancelled = True
            control.should_save = True  # a complete checkpoint, then a clean exit
            control.should_training_stop = True
            self._emit(
                EventKind.LOG,
                step,
                {"level": "warning", "message": f"Stopping: {self.stop.reason}; saving a checkpoint first."},
            )
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}")
        if step % max(1, args.logging_steps) == 0 or step >= state.max_steps or control.should_training_stop:
            done = step - self._start_step
            elapsed = time.monotonic() - self._started
            eta = (state.max_steps - step) * elapsed / done if done > 0 else None
            payload: dict[str, Any] = {"step": step, "total_steps": int(state.max_steps)}
            if eta is not None:
                payload["eta_seconds"] = round(eta, 2)
            self._emit(EventKind.PROGRESS, step, payload)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        step = state.global_step
        metrics: dict[str, float | str] = {}
        if "loss" in logs:
            # Our own per-step losses: the Trainer's logged loss hides NaN steps behind an average.
            loss, tps = self.stats.take_window()
            if loss is not None:
                metrics["loss"] = _number(loss)
            if tps is not None:
                metrics["tokens_per_second"] = round(tps, 2)
            metrics["tokens_seen"] = self.stats.tokens_seen
            for key in ("grad_norm", "learning_rate", "epoch"):
                if logs.get(key) is not None:
                    metrics[key] = _number(logs[key])
            metrics.update({k: round(v, 4) for k, v in memory_metrics().items()})
        if "eval_loss" in logs:
            metrics["eval_loss"] = _number(logs["eval_loss"])
            if "epoch" in logs and "epoch" not in metrics:
                metrics["epoch"] = _number(logs["epoch"])
        if metrics:
            self.last_metrics.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            self.reporter.emit(EventKind.METRIC, step, metrics)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self._last_eval_step = state.global_step
        if not state.is_world_process_zero or self.sampler is None:
            return
        model = kwargs.get("model")
        if model is None:
            return
        for prompt, completion in self.sampler(model):
            self.reporter.emit(
                EventKind.SAMPLE, state.global_step, {"prompt": prompt, "completion": completion}
            )

    @property
    def last_eval_step(self) -> int:
        """The step of the most recent evaluation (-1 when none)."""
        return self._last_eval_step

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        ckpt = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        # Our state first, the marker last: a kill before the marker leaves a directory nobody resumes from.
        (ckpt / STATE_FILE).write_text(json.dumps(self.state_dict()), encoding="utf-8")
        _maybe_kill_before_marker(self.run_dir, state.global_step)
        _write_marker(ckpt / CHECKPOINT_COMPLETE_MARKER, state.global_step)
        prune_checkpoints(self.run_dir, self.cfg.training.save_total_limit)
        self._emit(
            EventKind.CHECKPOINT,
            state.global_step,
            {"path": f"checkpoints/{ckpt.name}", "step": state.global_step},
        )

    # ------------------------------------------------------------------------------------------ guard

    def _on_guard(self, verdict: GuardVerdict, control: TrainerControl, kwargs: dict[str, Any]) -> None:
        policy = self.cfg.guard.policy
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
        self._emit(
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

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the callback (rollback count, learning-rate scale, guard history)."""
        return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's STATE_FILE (the scheduler's own state already carries the lr scale)."""
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.guard.load_state_dict(state.get("guard", {}))

    def _emit(self, kind: EventKind, step: int, payload: dict[str, Any]) -> None:
        self.reporter.emit(kind, step, payload)


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _device_of(model: Any) -> Any:
    return next(p.device for p in model.parameters())


def _maybe_kill_before_marker(run_dir: RunDir, step: int) -> None:
    """The INJECT_KILL_BEFORE_MARKER_ENV test hook: a kill in the middle of a checkpoint save."""
    if os.environ.get(INJECT_KILL_BEFORE_MARKER_ENV, "").strip() != str(step):
        return
    done = run_dir.root / f"injected-kill-before-marker-{step}"
    if done.exists():
        return
    done.write_text("killed once here by the test hook\n", encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)


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
