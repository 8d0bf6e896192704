"""The largest micro-batch that fits, found by a memory probe before training (one CUDA GPU).

An optimizer step keeps its rows: `batch_size × grad_accum` ("step rows") is split into the largest
micro-batch m that divides it and whose forward + backward at the full `max_seq_len` width stays within
the memory budget, with `step rows / m` accumulation steps. The loss does not change: the Trainer
normalises by the tokens of the whole optimizer step, not per micro-batch. A larger micro-batch is faster
on a GPU (Gemma 3n E2B dims, 8192 tokens a step, compiled: 5762 tokens/s at 8 × 2 and 8550 at 16 × 1 on
the H100; 7838 and 14211 on an H200).

Memory grows with m, so the search walks the divisors from the configured micro-batch: up while the next
one fits, down until one fits. Each probe is one eager forward + backward on random tokens, through the
same loss the training uses; the compiled layers are not compiled for it.

The chosen split is recorded in the run plan (RUN_DIR/plan.json), so a resumed run keeps it: the Trainer
counts the batches to skip from the accumulation steps. Runs started before the plan existed kept it in
`LEGACY_SPLIT_FILE`, which `load_legacy_split` still reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEGACY_SPLIT_FILE = "micro_batch.json"  # before the run plan; read only, for runs started then
BUDGET_FRACTION = 0.85  # of the GPU memory free before probing: room for optimizer state, eval, fragmentation


@dataclass(frozen=True)
class Split:
    """How the step rows are split, and what the probe saw (peak bytes per micro-batch; None: OOM)."""

    micro_batch: int
    grad_accum: int
    budget_bytes: int = 0
    tried: dict[int, int | None] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        gb = 1e9
        seen = ", ".join(
            f"{m}: {'out of memory' if peak is None else f'{peak / gb:.1f} GB'}"
            for m, peak in sorted(self.tried.items())
        )
        text = f"micro-batch {self.micro_batch} × {self.grad_accum} accumulation"
        if self.budget_bytes:
            text += f" (budget {self.budget_bytes / gb:.1f} GB; probed {seen})"
        return text + (f"; {self.note}" if self.note else "")


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_split(
    step_rows: int, configured: int, measure: Callable[[int], int | None], budget_bytes: int
) -> Split:
    """The largest divisor m of `step_rows` with `measure(m)` ≤ `budget_bytes`.

    `measure(m)` is the peak memory of one forward + backward at micro-batch m, or None when it ran out of
    memory. When not even 1 fits, the configured split is kept (training then fails with the usual
    out-of-memory advice).
    """
    options = divisors(step_rows)
    tried: dict[int, int | None] = {}

    def fits(m: int) -> bool:
        if m not in tried:
            tried[m] = measure(m)
        peak = tried[m]
        return peak is not None and peak <= budget_bytes

    i = max(j for j, m in enumerate(options) if m <= configured)
    if fits(options[i]):
        while i + 1 < len(options) and fits(options[i + 1]):
            i += 1
    else:
        while i > 0 and not fits(options[i - 1]):
            i -= 1
        i -= 1
        if i < 0:
            return Split(
                configured,
                step_rows // configured,
                budget_bytes,
                tried,
                "not even a micro-batch of 1 fits: keeping the configured split",
            )
    m = options[i]
    return Split(m, step_rows // m, budget_bytes, tried)


def split_from_dict(data: dict[str, Any]) -> Split:
    """A Split from its JSON form (the run plan's "micro_batch"; JSON keys of `tried` are strings)."""
    fields = dict(data)
    fields["tried"] = {int(k): v for k, v in (fields.get("tried") or {}).items()}
    return Split(**fields)


def load_legacy_split(run_dir: Path) -> Split | None:
    """The split an attempt from before the run plan saved in micro_batch.json, if any."""
    path = run_dir / LEGACY_SPLIT_FILE
    if not path.is_file():
        return None
    return split_from_dict(json.loads(path.read_text(encoding="utf-8")))


def training_loss(fused: Any) -> Callable[[Any, dict[str, Any]], Any]:
    """The loss the Trainer will compute: the fused linear + cross-entropy plan, or the model's own."""

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        if fused is not None:
            from worker.train.speed.fused_loss import causal_lm_loss

            return causal_lm_loss(model, batch, fused)
        return model(**batch).loss

    return loss_fn


def probe_pass(
    model: Any, loss_fn: Callable[[Any, dict[str, Any]], Any], rows: int, seq: int, dtype: Any, gen: Any
) -> None:
    """One eager forward + backward of rows × seq random tokens on the model's device, as training runs it."""
    import torch

    device = model.get_input_embeddings().weight.device
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (rows, seq), generator=gen, device=gen.device).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    half = dtype in (torch.bfloat16, torch.float16)
    # eager for the backward too: checkpointing recomputes the layers there, and compiling for every
    # probed shape would take minutes each
    with torch.compiler.set_stance("force_eager"):
        with torch.autocast(device.type, dtype=dtype, enabled=half and device.type == "cuda"):
            loss = loss_fn(model, batch)
        loss.backward()


def cuda_measure(
    model: Any, loss_fn: Callable[[Any, dict[str, Any]], Any], seq: int, dtype: Any
) -> Callable[[int], int | None]:
    """measure(m): peak allocated bytes of `probe_pass` at micro-batch m (None: out of memory)."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)

    def measure(m: int) -> int | None:
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        peak: int | None
        try:
            probe_pass(model, loss_fn, m, seq, dtype, gen)  # its batch and graph are freed when it ends
            torch.cuda.synchronize()
            peak = int(torch.cuda.max_memory_allocated())
        except torch.cuda.OutOfMemoryError:
            peak = None
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return peak

    return measure


def cuda_budget() -> int:
    """Bytes a training step may peak at: what is allocated now plus a share of what is free on the GPU."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    return int(torch.cuda.memory_allocated() + BUDGET_FRACTION * free)
