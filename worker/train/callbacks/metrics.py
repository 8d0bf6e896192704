"""The metrics reporter: per-step numbers, progress with its ETA, the progress bar, and the final metrics.

The Trainer subclass (worker/train/trainer.py) records each micro-batch into a StepStats; at each step end
this callback closes the step's loss into the logging window and reports PROGRESS, and at each logging step
it reports the window's mean loss, throughput and memory as one METRIC event. It runs after the guard and
the stop callback (worker/train/callbacks/__init__.py): the progress event follows their verdicts and
knows whether training is ending. Everything goes through `Reporter.emit` (a file append and a queue put),
so a step never waits on the network.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.metrics import PREFERENCE_KEYS
from contract.protocol import EventKind, encode_number
from worker.train.reporter import Reporter

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


class MetricsCallback(TrainerCallback):
    """Reports the run's status, progress and metrics, draws the progress bar, keeps the last metrics."""

    def __init__(self, *, reporter: Reporter, stats: StepStats, progress_bar: bool = False) -> None:
        self.reporter = reporter
        self.stats = stats
        self.progress_bar = progress_bar
        self.last_metrics: dict[str, float] = {}
        self._bar: Any = None
        self._started = 0.0
        self._start_step = 0
        self._last_eval_step = -1

    @property
    def last_eval_step(self) -> int:
        """The step of the most recent evaluation (-1 when none)."""
        return self._last_eval_step

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
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
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        loss = self.stats.step_loss()
        self.stats.close_step()
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
            self.reporter.emit(EventKind.PROGRESS, step, payload)

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
        # a preference run's rewards, margins, accuracy, log-probs, KL (contract/metrics.py PREFERENCE_KEYS)
        metrics.update({k: _number(v) for k, v in logs.items() if k in PREFERENCE_KEYS and v is not None})
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
