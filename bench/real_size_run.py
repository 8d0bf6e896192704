"""A short real-size run through Tuneboard's own worker: Gemma 3n E2B/E4B dims, random weights, 4-bit.

    python bench/real_size_run.py --size e2b --steps 12 --batch 4 --seq 512 --work bench-work/real

Builds the model from its config (bench/gemma3n_dims.py), writes a dataset of full-length text rows, runs
`python -m worker.train RUN_DIR` exactly as the app's launcher does (standalone: no app), then prints what the
worker reported: preflight summary, loss, tokens/s (median of steps after warm-up) and peak VRAM.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.protocol import read_spool
from contract.rundir import RunDir


def write_text_dataset(path: Path, rows: int, chars: int, seed: int = 0) -> None:
    """Rows of pseudo-words long enough to fill `chars` byte-level tokens each."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(400)
    ]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(rows):
            text = ""
            while len(text) < chars:
                text += rng.choice(words) + " "
            fh.write(json.dumps({"text": text[:chars]}) + "\n")


def text_job_config(
    name: str,
    model_dir: Path,
    data: Path,
    *,
    steps: int,
    batch: int,
    seq: int,
    quant: str = "nf4",
    gpus: int = 1,
    checkpointing: bool = True,
    grad_accum: int = 1,
    torch_compile: str = "auto",
    auto_micro_batch: str = "auto",
) -> dict[str, Any]:
    """A job config for a speed run: full-length text rows, LoRA r16, no eval, one checkpoint at the end."""
    return {
        "name": name,
        "model": {"name": str(model_dir)},
        "dataset": {
            "source": str(data),
            "format": "text",
            "eval_fraction": 0.0,
            "assistant_only_loss": False,
        },
        "quantization": {"method": quant},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "grad_accum": grad_accum,
            "torch_compile": torch_compile,
            "auto_micro_batch": auto_micro_batch,
            "max_seq_len": seq,
            "learning_rate": 2e-4,
            "eval_steps": 0,
            "save_steps": steps,
            "logging_steps": 1,
            "seed": 0,
            "gradient_checkpointing": checkpointing,
        },
        "resources": {"gpus": gpus},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="e2b", choices=["e2b", "e4b"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument(
        "--compile", default="auto", choices=["auto", "on", "off"], help="training.torch_compile"
    )
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--quant", default="nf4")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=None, help="an already saved model (else built)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument(
        "--auto-micro-batch",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "off"],
        help="training.auto_micro_batch (the flag alone: on)",
    )
    args = parser.parse_args()

    from bench.gemma3n_dims import save_random_model

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or args.work / f"gemma3n-{args.size}"
    if not (model_dir / "config.json").exists():
        save_random_model(args.size, model_dir)
    data = args.work / "long-text.jsonl"
    write_text_dataset(data, rows=args.batch * args.grad_accum * (args.steps + 2), chars=args.seq + 64)

    run = RunDir(args.work / f"run-{args.size}-{args.quant}-b{args.batch}-s{args.seq}")
    run.root.mkdir(parents=True, exist_ok=True)
    config = text_job_config(
        f"real-size {args.size} {args.quant}",
        model_dir,
        data,
        steps=args.steps,
        batch=args.batch,
        seq=args.seq,
        quant=args.quant,
        gpus=1,
        checkpointing=not args.no_checkpointing,
        grad_accum=args.grad_accum,
        torch_compile=args.compile,
        auto_micro_batch=args.auto_micro_batch,
    )
    run.config.write_text(json.dumps(config, indent=2))
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "worker.train", str(run.root)], check=False)
    wall = time.time() - start

    events = read_spool(run.events)
    metrics: dict[str, list[tuple[int, float]]] = {}
    for ev in events:
        if ev["kind"] == "metric":
            for key, value in ev["payload"].items():
                if isinstance(value, (int, float)):
                    metrics.setdefault(key, []).append((ev["step"], float(value)))
        elif ev["kind"] in ("preflight", "guard", "log"):
            print(f"[{ev['kind']}] {json.dumps(ev['payload'])[:400]}")
    tps = [v for s, v in metrics.get("tokens_per_second", []) if s > 3]
    loss = metrics.get("loss", [])
    print("\n== real-size run summary")
    from contract.protocol import ExitCode

    name = ExitCode(proc.returncode).name if proc.returncode in {int(c) for c in ExitCode} else "?"
    print(
        f"exit code {proc.returncode} ({name}), wall {wall:.0f} s, "
        f"outcome: {run.outcome.read_text() if run.outcome.exists() else '-'}"
    )
    if loss:
        print(
            f"loss: first {loss[0][1]:.3f} (step {loss[0][0]}), last {loss[-1][1]:.3f} (step {loss[-1][0]})"
        )
    if tps:
        print(f"tokens/s (median of steps > 3): {statistics.median(tps):.0f}")
    for key in ("vram_peak_gb", "vram_reserved_gb", "vram_allocated_gb", "gpu_util"):
        vals = [v for _, v in metrics.get(key, [])]
        if vals:
            print(f"{key}: max {max(vals):.2f}")


if __name__ == "__main__":
    main()
