"""A DPO step against an SFT step on the worker's 4-bit path: tokens/s and peak memory, as ratios.

    python -m bench.preference_step --model e2b --seq 512 --pairs 4 --steps 8

One process, one loaded model (the worker's loader, `bench.speed.load_tuneboard`: nf4, no upcast, the
recipe's attention, gradient checkpointing), three step kinds on batches of the same 2 × pairs rows of
`seq` tokens (the second half of each row is the answer):
- sft: the worker's SFT loss on the answers (fused where its plan says; the baseline, measured in this run);
- dpo: DPO with the reference log-probs precomputed (preference.reference auto): one forward + backward;
- dpo-live: DPO with the reference from the same weights with the adapter switched off, every step: one
  more forward without gradients.
Each kind runs `--steps` steps after 2 warm-up steps; the median step time gives tokens/s. `--model tiny`
uses the tiny-gemma3n preset (a CPU smoke run of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def batches(steps: int, pairs: int, seq: int, vocab: int) -> Any:
    """[steps, 2·pairs, seq] ids: chosen rows then rejected rows sharing their prompt half."""
    import torch

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, vocab, (steps, pairs, seq // 2), generator=g)
    chosen = torch.randint(10, vocab, (steps, pairs, seq - seq // 2), generator=g)
    rejected = torch.randint(10, vocab, (steps, pairs, seq - seq // 2), generator=g)
    return torch.cat([torch.cat([prompt, chosen], -1), torch.cat([prompt, rejected], -1)], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="e2b", choices=["e2b", "e4b", "llama1b", "tiny"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--all-logits", dest="keep_answer_logits", action="store_false", help="DPO: logits for every position"
    )
    parser.add_argument("--work", default=None, help="where the random-weight model is saved (reused)")
    args = parser.parse_args()

    import torch

    from bench.speed import load_tuneboard, save_model
    from worker.presets import preset_model_dir
    from worker.train.preference.losses import dpo_loss
    from worker.train.preference.trainer import sequence_logps
    from worker.train.speed.fused_loss import causal_lm_loss

    work = Path(args.work or tempfile.mkdtemp(prefix="tb-pref-bench-"))
    model_dir = preset_model_dir("tiny-gemma3n") if args.model == "tiny" else save_model(args.model, work)
    model, optimizer, fused, _compiler, plan = load_tuneboard(model_dir)
    device = next(p.device for p in model.parameters())
    cuda = device.type == "cuda"
    vocab = min(2000, int(model.config.get_text_config().vocab_size))
    total = args.steps + 2
    data = batches(total, args.pairs, args.seq, vocab)
    labels_mask = torch.zeros(args.seq, dtype=torch.bool)
    labels_mask[args.seq // 2 :] = True
    model.train()

    def batch(i: int) -> dict[str, Any]:
        ids = data[i].to(device)
        labels = ids.masked_fill(~labels_mask.to(device), -100)
        # answer_start as the preference collator sets it: logits only from the answers on
        start = args.seq // 2 - 1 if args.keep_answer_logits else 0
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "answer_start": start,
        }

    def sft_step(b: dict[str, Any]) -> None:
        b = {k: v for k, v in b.items() if k != "answer_start"}
        # the worker's SFT loss: fused linear + cross-entropy where the plan turned it on
        if fused is not None:
            causal_lm_loss(model, b, fused, None).backward()
        else:
            model(**b, use_cache=False).loss.backward()

    def dpo_step(b: dict[str, Any], live: bool) -> None:
        logps, tokens = sequence_logps(model, b)
        half = logps.shape[0] // 2
        if live:
            with torch.no_grad(), model.disable_adapter():
                ref = sequence_logps(model, b)[0]
        else:
            ref = torch.full_like(logps, -1000.0)  # precomputed before training: free here
        loss, _ = dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], beta=0.1)
        loss.backward()

    kinds = {"sft": sft_step, "dpo": lambda b: dpo_step(b, False), "dpo-live": lambda b: dpo_step(b, True)}
    results: dict[str, tuple[float, float]] = {}
    for name, step in kinds.items():
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(total):
            b = batch(i)
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            step(b)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - started)
        tokens = 2 * args.pairs * args.seq
        peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan")
        results[name] = (tokens / statistics.median(times), peak)
        print(f"[{name}] {results[name][0]:9.1f} tokens/s  peak {peak:6.2f} GB", flush=True)
    base_tps, base_mem = results["sft"]
    print(f"\nmodel {args.model}, {2 * args.pairs} rows × {args.seq} tokens, device {device}, plan levers:")
    print("  " + ", ".join(f"{c.name}={c.shown}" for c in plan.levers.values()))
    print(f"{'step':10} {'tokens/s':>10} {'× sft':>7} {'peak GB':>8} {'× sft':>7}")
    for name, (tps, mem) in results.items():
        mem_ratio = mem / base_mem if cuda else float("nan")
        print(f"{name:10} {tps:10.1f} {tps / base_tps:7.2f} {mem:8.2f} {mem_ratio:7.2f}")


if __name__ == "__main__":
    main()
