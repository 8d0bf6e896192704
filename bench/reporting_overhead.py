"""What the dashboard's reporting costs a training step: the same tiny-model training with and without it.

    python -m bench.reporting_overhead --steps 40 --rounds 3

"With" is the worker's own Trainer subclass (per-micro-batch loss and token bookkeeping), its callback
(guard, progress and metric events every step, memory metrics) and the Reporter spooling to events.jsonl;
"without" is a plain transformers Trainer on the same model and data. Rounds alternate so drift in the
machine's load hits both. Two numbers are printed:

- direct: the time spent inside the callback's hooks and the Reporter, over the training time (precise);
- A/B: median step time with over without, minus 1 (includes everything, but noisy on a busy machine).

The tiny model makes a step short (tens of milliseconds on CPU), so the ratio is an upper bound for real
models, whose steps take seconds while the reporting work per step stays the same. The Reporter has no app
to post to here (standalone spool); posting happens on its own thread, off the training step.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Clock:
    """Accumulates the seconds spent in wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (the same tiny cost in both modes)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def run(mode: str, steps: int, work: Path, loaded: Any, prepared: Any, cfg: Any) -> dict[str, float]:
    """Train `steps` steps with (mode "with") or without the reporting; return step-time numbers."""
    from transformers import Trainer

    from contract.rundir import RunDir
    from worker.train.callbacks import training_callbacks
    from worker.train.callbacks.metrics import StepStats
    from worker.train.data import PadCollator
    from worker.train.reporter import Reporter
    from worker.train.signals import StopRequest
    from worker.train.trainer import build_optimizer, trainer_class, training_arguments

    rd = RunDir(Path(tempfile.mkdtemp(dir=work)))
    model, tokenizer = loaded.model, loaded.tokenizer
    optimizer, _ = build_optimizer(cfg, model, "cpu")
    args = training_arguments(cfg, rd, "cpu", loaded.dtype, has_eval=False)
    timer = _step_timer()
    common = {
        "model": model,
        "args": args,
        "train_dataset": prepared.train,
        "data_collator": PadCollator(tokenizer.pad_token_id),
        "optimizers": (optimizer, None),
    }
    clock = _Clock()
    reporter = None
    if mode == "with":
        reporter = Reporter(rd, None)
        reporter.emit = clock.wrap(reporter.emit)  # type: ignore[method-assign]
        stats = StepStats()
        callbacks = training_callbacks(
            cfg=cfg, run_dir=rd, reporter=reporter, stats=stats, stop=StopRequest(rd.control, None)
        ).in_order()
        for callback in callbacks:
            for hook in ("on_step_end", "on_log", "on_pre_optimizer_step", "on_step_begin", "on_substep_end"):
                if hasattr(callback, hook):
                    setattr(callback, hook, clock.wrap(getattr(callback, hook)))
        trainer = trainer_class()(**common, callbacks=[*callbacks, timer], step_stats=stats)
    else:
        trainer = Trainer(**common, callbacks=[timer])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    if reporter is not None:
        reporter.close(timeout=5.0)
    times = timer.times[3:]
    return {"median_step_s": statistics.median(times), "train_s": total, "reporting_s": clock.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from contract.config import demo_config
    from worker.train.data import prepare_data
    from worker.train.loading import load_for_training

    torch.set_num_threads(1)
    cfg = demo_config()
    cfg.training.max_steps = args.steps
    cfg.training.logging_steps = 1  # the worst case: a metric event every step
    cfg.training.save_steps = args.steps * 10  # no checkpoint inside the measured steps
    cfg.training.eval_steps = 0
    loaded = load_for_training(cfg, device="cpu")
    prepared = prepare_data(cfg, loaded.tokenizer)
    results: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for mode in ("without", "with"):
                results[mode].append(run(mode, args.steps, Path(tmp), loaded, prepared, cfg))
    with_step = statistics.median(r["median_step_s"] for r in results["with"])
    without_step = statistics.median(r["median_step_s"] for r in results["without"])
    direct = sum(r["reporting_s"] for r in results["with"]) / sum(r["train_s"] for r in results["with"])
    print(f"tiny model on CPU, {args.steps} steps × {args.rounds} rounds, a metric event every step")
    print(f"median step: without reporting {1000 * without_step:.1f} ms, with {1000 * with_step:.1f} ms")
    print(f"A/B overhead: {100 * (with_step / without_step - 1):+.2f}% (noisy: other work on this machine)")
    print(f"direct overhead (callback hooks + Reporter.emit over training time): {100 * direct:.3f}%")
    print("budget: 1% →", "PASS" if direct <= 0.01 else "FAIL")


if __name__ == "__main__":
    main()
