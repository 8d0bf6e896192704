"""What `report_to` costs a training step: the worker's training with and without the tracker forwarder.

    python -m bench.trackers_overhead --steps 40 --rounds 2

Both modes are the worker's own training (its Trainer subclass, callbacks and Reporter spooling a metric
event every step, the worst case); "with" adds the forwarder (worker/train/trackers/) sending those events
to every tracker installed here, each in its local mode (W&B offline, MLflow SQLite, TensorBoard files,
Trackio local). The trackers are opened before the timed steps (opening happens on the forwarder's thread
during model loading in a real run) and closed after them; both times are printed apart. Rounds alternate so
drift in the machine's load hits both modes. Printed:

- tracker calls made on the training thread (the design says none: they all run on the forwarder's thread);
- A/B: median step time with over without, minus 1 (everything the trackers' threads and processes take
  from the training, noisy on a busy machine);
- each tracker's open time and the close time (the end of a run waits for it, bounded by the forwarder).

The tiny model makes a step short (tens of milliseconds on CPU), so the ratio is an upper bound for real
models, whose steps take seconds while the trackers' work per metric event stays the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reporting_overhead import _step_timer  # noqa: E402


def available_trackers() -> list[str]:
    """The trackers whose package imports here."""
    import importlib.util

    modules = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard", "trackio": "trackio"}
    return [name for name, module in modules.items() if importlib.util.find_spec(module) is not None]


def _cpu_outside_training() -> float:
    """CPU seconds so far of this process's threads other than the calling (training) one, plus children's
    (W&B's service process): what the trackers take from the machine, whatever else runs on it."""
    import psutil

    me = psutil.Process()
    own = threading.get_native_id()
    threads = sum(t.user_time + t.system_time for t in me.threads() if t.id != own)
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return threads + children


def run(trackers: list[str], steps: int, work: Path, loaded: Any, prepared: Any, cfg: Any) -> dict[str, Any]:
    """Train `steps` steps, with the forwarder to `trackers` when any; return the step times and more."""
    from contract.rundir import RunDir
    from worker.train.callbacks import training_callbacks
    from worker.train.callbacks.metrics import StepStats
    from worker.train.data import PadCollator
    from worker.train.reporter import Reporter
    from worker.train.signals import StopRequest
    from worker.train.trackers.backends import BACKENDS, RunContext
    from worker.train.trackers.forwarder import Forwarder, trackers_dir
    from worker.train.trainer import build_optimizer, trainer_class, training_arguments

    rd = RunDir(Path(tempfile.mkdtemp(dir=work)))
    model, tokenizer = loaded.model, loaded.tokenizer
    optimizer, _ = build_optimizer(cfg, model, "cpu")
    args = training_arguments(cfg, rd, "cpu", loaded.dtype, has_eval=False)
    timer = _step_timer()
    reporter = Reporter(rd, None)
    stats = StepStats()
    callbacks = training_callbacks(
        cfg=cfg, run_dir=rd, reporter=reporter, stats=stats, stop=StopRequest(rd.control, None)
    ).in_order()
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=prepared.train,
        data_collator=PadCollator(tokenizer.pad_token_id),
        optimizers=(optimizer, None),
        callbacks=[*callbacks, timer],
        step_stats=stats,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    training_thread = threading.current_thread()
    calls = {"training_thread": 0, "other": 0}
    originals = {}
    for name in trackers:  # count where each tracker's metrics are recorded (and how many rows)
        cls = BACKENDS[name]
        originals[name] = cls.log_many

        def counted(self: Any, rows: list[Any], _log: Any = cls.log_many) -> None:
            on_training = threading.current_thread() is training_thread
            calls["training_thread" if on_training else "other"] += len(rows)
            _log(self, rows)

        cls.log_many = counted  # type: ignore[method-assign]
    forwarder = None
    if trackers:
        ctx = RunContext(trackers_dir(rd), "tuneboard-bench", rd.root.name, {"bench": True})
        forwarder = Forwarder(trackers, ctx, rd, reporter).start()
        forwarder.ready.wait(300)
    before = _cpu_outside_training()
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    outside_s = _cpu_outside_training() - before
    close_s = 0.0
    if forwarder is not None:
        start = time.perf_counter()
        forwarder.close(failed=False)
        close_s = time.perf_counter() - start
    for name, log in originals.items():
        BACKENDS[name].log_many = log  # type: ignore[method-assign]
    reporter.close(timeout=5.0)
    return {
        "median_step_s": statistics.median(timer.times[3:]),
        "train_s": train_s,
        "close_s": close_s,
        "open_s": dict(forwarder.open_seconds) if forwarder else {},
        "dropped": dict(forwarder.dropped) if forwarder else {},
        "forwarded": forwarder.forwarded if forwarder else 0,
        "calls": calls,
        "outside_cpu_per_step_s": outside_s / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trackers", default="", help="comma-separated (default: every one installed)")
    args = parser.parse_args()

    import os

    import torch

    from contract.config import demo_config
    from worker.train.data import prepare_data
    from worker.train.loading import load_for_training

    os.environ.setdefault("WANDB_MODE", "offline")  # local modes only: nothing leaves the machine
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    torch.set_num_threads(1)
    cfg = demo_config()
    cfg.training.max_steps = args.steps
    cfg.training.logging_steps = 1  # the worst case: a metric event every step
    cfg.training.save_steps = args.steps * 10  # no checkpoint inside the measured steps
    cfg.training.eval_steps = 0
    loaded = load_for_training(cfg, device="cpu")
    prepared = prepare_data(cfg, loaded.tokenizer)
    trackers = [t for t in args.trackers.split(",") if t] or available_trackers()
    results: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        # TRACKIO_DIR is read once, when trackio is imported: one directory for every round
        os.environ.setdefault("TRACKIO_DIR", str(Path(tmp) / "trackio"))
        for _ in range(args.rounds):
            results["without"].append(run([], args.steps, Path(tmp), loaded, prepared, cfg))
            results["with"].append(run(trackers, args.steps, Path(tmp), loaded, prepared, cfg))
    with_step = statistics.median(r["median_step_s"] for r in results["with"])
    without_step = statistics.median(r["median_step_s"] for r in results["without"])
    on_training = sum(r["calls"]["training_thread"] for r in results["with"])
    elsewhere = sum(r["calls"]["other"] for r in results["with"])
    print(
        f"trackers: {', '.join(trackers) or 'none installed'}; tiny model on CPU, {args.steps} steps × "
        f"{args.rounds} rounds, a metric event every step"
    )
    for r in results["with"]:
        opened = ", ".join(f"{k} {v:.1f} s" for k, v in r["open_s"].items())
        print(
            f"  open: {opened}; close {r['close_s']:.1f} s; events forwarded {r['forwarded']}; "
            f"dropped {r['dropped'] or 'none'}"
        )
    for without, with_ in zip(results["without"], results["with"], strict=True):
        a, b = 1000 * without["median_step_s"], 1000 * with_["median_step_s"]
        print(f"  round: without {a:.1f} ms, with {b:.1f} ms")
    print(f"tracker calls on the training thread: {on_training} (on the forwarder's thread: {elsewhere})")
    print(f"median step: without trackers {1000 * without_step:.1f} ms, with {1000 * with_step:.1f} ms")
    print(f"A/B overhead: {100 * (with_step / without_step - 1):+.2f}% (noisy: other work on this machine)")
    cpu_with = statistics.median(r["outside_cpu_per_step_s"] for r in results["with"])
    cpu_without = statistics.median(r["outside_cpu_per_step_s"] for r in results["without"])
    extra = cpu_with - cpu_without
    print(
        f"CPU outside the training thread per step: without {1000 * cpu_without:.2f} ms, with "
        f"{1000 * cpu_with:.2f} ms: the trackers take {1000 * extra:.2f} ms of CPU a step, "
        f"{100 * extra / without_step:.1f}% of a {1000 * without_step:.0f} ms step (load-independent)"
    )
    print("training thread never calls a tracker →", "PASS" if on_training == 0 and elsewhere > 0 else "FAIL")


if __name__ == "__main__":
    main()
