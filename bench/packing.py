"""Padding-free packing vs padded batches: the same examples, the same model, one epoch each.

    python -m bench.packing                                   # CPU: tiny Gemma 3n preset, 4-bit, ~1 min
    python -m bench.packing --model e2b --seq 512 --rows 8    # GPU: Gemma 3n E2B dims (bench.speed's model)

Examples have random tokens and lengths drawn from a log-normal distribution around `--mean-len`
(clipped to [8, seq]), like instruction data: many short rows, a few long ones. Both modes train on every
example once, in the same order, `--rows` rows per optimizer step, through the worker's loader (4-bit,
LoRA, checkpointing) and its collator:

- padded: `--rows` examples per batch, padded to the longest of the batch (what `training.packing: false`
  does);
- packed: examples packed into rows of up to `--seq` tokens (`training.packing: true`: position ids restart
  at each example, no attention across examples), `--rows` rows per batch.

Printed per mode: batches, real tokens, padding share, seconds (the first batch, a warm-up, left out),
real tokens/s, peak allocated memory (CUDA), the mean loss, and the packed/padded ratios. The modes
alternate over `--rounds` so drift in the machine's load hits both; the medians are compared.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_examples(count: int, mean_len: int, seq: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """`count` examples with log-normal lengths (sigma 0.6) around `mean_len`, clipped to [8, seq]."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = max(8, min(seq, int(rng.lognormvariate(math.log(mean_len), 0.6))))
        ids = [rng.randrange(10, vocab) for _ in range(n)]
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": list(ids)})
    return out


def batches(examples: list[dict[str, list[int]]], rows: int, seq: int, packed: bool) -> list[dict[str, Any]]:
    """The epoch's collated batches in the worker's two layouts."""
    from worker.train.data import PadCollator, pack_examples

    items = pack_examples(examples, seq) if packed else examples
    collate = PadCollator(pad_token_id=0)
    return [collate(items[i : i + rows]) for i in range(0, len(items), rows)]


def load(model: str, work: Path) -> tuple[Any, Any, str]:
    """The worker's training model and optimizer for a preset name or bench.speed's saved dims."""
    import torch

    from contract.config import parse_config
    from worker.train.loading import load_for_training
    from worker.train.trainer import build_optimizer

    if model in ("e2b", "e4b", "llama1b"):
        from bench.speed import save_model

        name = str(save_model(model, work))
    else:
        name = f"preset:{model}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = parse_config(
        {
            "model": {"name": name},
            "dataset": {"source": "preset:reverse-letters"},
            "quantization": {"method": "nf4"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": {"learning_rate": 2e-4, "gradient_checkpointing": True, "torch_compile": "off"},
        }
    )
    torch.manual_seed(0)
    loaded = load_for_training(cfg, device=device)
    optimizer, _ = build_optimizer(cfg, loaded.model, device)
    loaded.model.train()
    return loaded.model, optimizer, device


def run_epoch(model: Any, optimizer: Any, device: str, epoch: list[dict[str, Any]]) -> dict[str, float]:
    """Train one optimizer step per batch; time all but the first."""
    import torch

    from worker.train.data import TOKENS_KEY, batch_tokens
    from worker.train.trainer import trainable_parameters

    trainable = trainable_parameters(model)  # once, not a walk over every module each step
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, real, slots, started = [], 0, 0, 0.0
    for i, batch in enumerate(epoch):
        if i == 1:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        inputs = {k: v.to(device) for k, v in batch.items() if k != TOKENS_KEY}
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if i >= 1:
            real += batch_tokens(batch)
            slots += batch["input_ids"].numel()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "batches": len(epoch),
        "real_tokens": real,
        "padding": 1 - real / slots,
        "seconds": seconds,
        "tokens_per_s": real / seconds,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
        "mean_loss": statistics.fmean(losses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-gemma3n", help="a preset name, or e2b | e4b | llama1b")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--mean-len", type=int, default=0, help="median example length (default seq/6)")
    parser.add_argument("--examples", type=int, default=0, help="default: 48 × rows")
    parser.add_argument("--rows", type=int, default=8, help="rows per optimizer step, both modes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", default="", help="where bench.speed's saved models live")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="tuneboard-packing-"))
    model, optimizer, device = load(args.model, work)
    vocab = int(model.get_input_embeddings().num_embeddings)
    examples = make_examples(
        args.examples or 48 * args.rows, args.mean_len or max(8, args.seq // 6), args.seq, min(vocab, 2000), 1
    )
    layouts = {
        mode: batches(examples, args.rows, args.seq, mode == "packed") for mode in ("padded", "packed")
    }
    results: dict[str, list[dict[str, float]]] = {"padded": [], "packed": []}
    for r in range(args.rounds):
        for mode in ("padded", "packed") if r % 2 == 0 else ("packed", "padded"):
            results[mode].append(run_epoch(model, optimizer, device, layouts[mode]))
            print(f"round {r + 1} {mode}: {results[mode][-1]['tokens_per_s']:.0f} real tokens/s", flush=True)

    print(
        f"\n{args.model}, {device}, seq {args.seq}, {len(examples)} examples "
        f"(lengths median {statistics.median(len(e['input_ids']) for e in examples):.0f}, "
        f"max {max(len(e['input_ids']) for e in examples)}), {args.rows} rows per step, "
        f"median of {args.rounds} rounds"
    )
    print("| mode | batches | padding | real tokens/s | epoch s | peak alloc GB | mean loss |")
    print("|---|---|---|---|---|---|---|")
    med: dict[str, dict[str, float]] = {}
    for mode, runs in results.items():
        med[mode] = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        m = med[mode]
        print(
            f"| {mode} | {m['batches']:.0f} | {m['padding']:.1%} | {m['tokens_per_s']:.0f} | "
            f"{m['seconds']:.1f} | {m['peak_gb']:.2f} | {m['mean_loss']:.3f} |"
        )
    speed = med["packed"]["tokens_per_s"] / med["padded"]["tokens_per_s"]
    line = f"packed / padded: real tokens/s {speed:.2f}×"
    if device.startswith("cuda"):
        line += f", peak memory {med['packed']['peak_gb'] / med['padded']['peak_gb']:.2f}×"
    print(line)


if __name__ == "__main__":
    main()
