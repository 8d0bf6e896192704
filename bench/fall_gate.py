"""A loss gate that can fail: rule-generated data whose loss falls far, and a check along the whole fall.

With random weights on random tokens both curves of `bench.speed` stayed flat (12.88 over 50 steps), so a
1% step-by-step agreement said little about the gradients. Here every row is the cycle a, b, c, ... x
(24 tokens) from a random start, after the tokenizer's BOS: the next token is a fixed function of the
current one, so even a random-weight model with LoRA learns it in a few dozen steps and the loss falls from
~ln(vocab) towards 0 (measured numbers: bench/README.md). The ids are the tiny preset tokenizer's letters
(`a` = 70), which every saved bench model carries, so the same rows can be written as text for a real job
(`rule_text`).

`fall_gate` compares two curves (reference = the seed's, candidate = a Tuneboard recipe's) step by step in
units of the reference's fall: |a_t - b_t| / (a_0 - min a). Near the bottom a relative difference per step
blows up on losses of 0.01, and on the plateau before the fall it says nothing; the fall is the scale the
training signal itself moves on. It passes when every step (and every eval point) is within `tolerance` of
the fall, the first step agrees within 1% (same weights: only rounding differs), and the reference fell by
at least `min_fall` of its start, so a flat curve cannot pass for an agreeing one (bench/README.md gives the
measured margins that set the tolerance).

MFU both ways (`flops_per_token_both`): the usual 6N counts 2N for the forward, 2N for the activation
gradients and 2N for the weight gradients of every Linear. Frozen 4-bit weights get no weight gradient, so
a frozen-base count is 4N for the base plus 6·N_lora for the LoRA matrices (one multiply-accumulate per
LoRA parameter per token); attention (12·L·A·seq) is the same in both. Neither counts the recomputation of
gradient checkpointing.
"""

from __future__ import annotations

import math
from typing import Any

RULE_FIRST_ID = 70  # "a" in the tiny preset tokenizer (byte-level: one token per character)
RULE_PERIOD = 24  # a..x
RULE_BOS_ID = 2
# Every step and eval point within this fraction of the reference's fall (bench/README.md says why).
FALL_TOLERANCE = 0.05
# The reference must fall by at least this fraction of its first loss, or the gate is uninformative.
MIN_FALL = 0.5
STEP1_REL_TOL = 0.01


def rule_batches(rows: int, seq: int, seed: int) -> Any:
    """[rows, seq] token ids: BOS, then the 24-letter cycle from a random start per row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, RULE_PERIOD, (rows, 1), generator=g)
    cycle = RULE_FIRST_ID + (start + torch.arange(seq - 1)) % RULE_PERIOD
    bos = torch.full((rows, 1), RULE_BOS_ID, dtype=cycle.dtype)
    return torch.cat([bos, cycle], dim=1).contiguous()


def rule_text(rows: int, chars: int, seed: int) -> list[str]:
    """The same rule as text rows of `chars` characters (the tiny tokenizer adds the BOS)."""
    import random

    rng = random.Random(seed)
    letters = "".join(chr(ord("a") + i) for i in range(RULE_PERIOD))
    out = []
    for _ in range(rows):
        start = rng.randrange(RULE_PERIOD)
        out.append("".join(letters[(start + i) % RULE_PERIOD] for i in range(chars)))
    return out


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def fall_gate(
    reference: list[float],
    candidate: list[float],
    ref_eval: list[float] | None = None,
    cand_eval: list[float] | None = None,
    tolerance: float = FALL_TOLERANCE,
    min_fall: float = MIN_FALL,
) -> dict[str, Any]:
    """Both curves along the whole fall, in units of the reference's fall; see the module docstring."""
    n = min(len(reference), len(candidate))
    a, b = reference[:n], candidate[:n]
    if not n or not _finite(a) or not _finite(b):
        return {"steps": n, "passed": False, "why": "no steps or a non-finite loss"}
    fall = a[0] - min(a)
    fell_enough = fall >= min_fall * abs(a[0])
    scale = max(fall, 1e-9)
    dev = [abs(x - y) / scale for x, y in zip(a, b, strict=True)]
    worst = max(range(n), key=lambda i: dev[i])
    step1 = abs(a[0] - b[0]) / max(abs(a[0]), 1e-9)
    result: dict[str, Any] = {
        "steps": n,
        "reference_first_min_last": (a[0], min(a), a[-1]),
        "candidate_first_min_last": (b[0], min(b), b[-1]),
        "fall": fall,
        "fell_enough": fell_enough,
        "step1_rel_diff": step1,
        "max_dev_of_fall": dev[worst],
        "worst_step": worst + 1,
        "mean_dev_of_fall": sum(dev) / n,
        "tolerance": tolerance,
    }
    passed = fell_enough and step1 <= STEP1_REL_TOL and dev[worst] <= tolerance
    if ref_eval and cand_eval:
        m = min(len(ref_eval), len(cand_eval))
        ea, eb = ref_eval[:m], cand_eval[:m]
        if not _finite(ea) or not _finite(eb):
            result["eval_max_dev_of_fall"] = float("inf")
            passed = False
        else:
            eval_fall = max(ea[0] - min(ea), 1e-9)
            eval_dev = max(abs(x - y) / eval_fall for x, y in zip(ea, eb, strict=True))
            result["eval_points"] = m
            result["eval_first_min"] = (ea[0], min(ea))
            result["eval_max_dev_of_fall"] = eval_dev
            passed = passed and eval_dev <= tolerance
    result["passed"] = bool(passed)
    if not fell_enough:
        result["why"] = f"the reference fell {fall:.3g}, under {min_fall:.0%} of its start: uninformative"
    return result


def gate_line(name: str, ref_name: str, g: dict[str, Any]) -> str:
    """One printed line for a fall gate result."""
    if "fall" not in g:
        return f"fall gate {name} vs {ref_name}: FAIL ({g.get('why')})"
    ev = ""
    if "eval_max_dev_of_fall" in g:
        ev = f"; eval max {g['eval_max_dev_of_fall']:.3f} of its fall over {g.get('eval_points', 0)} points"
    ra, ca = g["reference_first_min_last"], g["candidate_first_min_last"]
    return (
        f"fall gate {name} vs {ref_name} over {g['steps']} steps: {ref_name} {ra[0]:.3f} → {ra[2]:.3f}, "
        f"{name} {ca[0]:.3f} → {ca[2]:.3f}; step-1 rel diff {g['step1_rel_diff']:.1e}; "
        f"max |diff| {g['max_dev_of_fall']:.3f} of the fall (step {g['worst_step']}), "
        f"mean {g['mean_dev_of_fall']:.3f}{ev} (tolerance {g['tolerance']})"
        f" → {'PASS' if g['passed'] else 'FAIL'}" + (f" ({g['why']})" if g.get("why") else "")
    )


def flops_per_token_both(linear_params: float, lora_params: float, attention: float) -> dict[str, float]:
    """FLOPs per token: the 6N convention and the frozen-base count (module docstring)."""
    return {
        "six_n": 6 * linear_params + attention,
        "frozen_base": 4 * linear_params + 6 * lora_params + attention,
    }
