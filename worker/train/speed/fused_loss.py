"""Causal-LM loss without materialising the logits: the decoder's hidden states go straight into a fused
linear + cross-entropy (liger-kernel on CUDA, a chunked and recomputed PyTorch version elsewhere).

Why: Gemma 3n's vocabulary has 262,400 entries, so the fp32 logits of one 16 × 1024 micro-batch are ~17 GB
(plus their gradient); measured on an H100 the fused loss removes ~13 GB at 4 × 1024. Gemma's final logit
softcapping (`tanh(logits / c) · c`) is applied inside both implementations, so the loss is the model's own.

The loss equals the model's: labels are shifted left with -100 padding, positions labelled -100 carry no loss
(and are dropped before the head, which also skips the head's work on prompt and padding tokens), and the
sum is divided by `num_items_in_batch` when the Trainer passes it (gradient accumulation), else by the
number of labelled tokens — exactly `ForCausalLMLoss`.

`speed.fused_loss` overrides the automatic choice: off never, on wherever the model allows it (also on
CPU, with the chunked version), auto: on CUDA when liger-kernel is importable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
# Model types whose causal-LM forward is exactly `lm_head(decoder(...).last_hidden_state)`, optionally
# softcapped; models that scale their logits some other way keep the stock loss.
SUPPORTED_MODEL_TYPES = frozenset(
    {
        "gemma3n",
        "gemma3n_text",
        "gemma3",
        "gemma3_text",
        "gemma2",
        "gemma",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
    }
)
CHUNK_ELEMENTS = 1 << 27  # logits per chunk in the PyTorch version (512 MB in fp32)
# liger-kernel sizes its chunks to ~BT·H logits: for a 262k vocabulary ~128 chunks of 16-64 rows, each
# reading the whole 262k × H head weight twice (logits, input gradient) in a skinny, memory-bound product.
# Chunks of 1024 rows cut the step's GPU kernel time on E2B 16 × 512 from 486 to 434 ms in one H200
# profile (same process, A/B/A; peak allocated 6.07 GB both ways; bench/README.md). Wall-clock A/Bs on the
# H100 had been inside the ±10% spread of host-bound steps, which is why liger's sizing was kept before.
# speed.fused_loss_chunk_rows 0 restores liger's own sizing.
DEFAULT_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class FusedLoss:
    """How a model's loss is computed fused: the implementation and the pieces of the model it uses."""

    impl: str  # "liger" | "chunked"
    softcap: float | None
    reason: str
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # liger's rows per chunk (0: liger's own sizing)


def _liger_loss_class() -> Any:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss


def liger_available() -> bool:
    """Whether liger-kernel's fused linear cross-entropy imports (it needs triton, so CUDA machines)."""
    try:
        _liger_loss_class()
    except Exception:  # ImportError, or triton failing to initialise without a GPU
        return False
    return True


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model: Any) -> str | None:
    """Why `model`'s loss cannot be fused (its logits are not a plain head's), or None when it can."""
    import torch

    base = _base(model)
    config = base.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = str(getattr(config, "model_type", ""))
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type {kind!r} is not known to compute its logits as a plain head"
    if getattr(text, "logit_scale", None) not in (None, 1, 1.0) or getattr(text, "logits_scaling", None):
        return "the model scales its logits"
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return "the output head is adapted, quantized or has a bias"
    if not isinstance(getattr(base, "model", None), torch.nn.Module):
        return "the model has no inner decoder to call"
    return None


def plan_fused_loss(
    model: Any,
    device: str,
    distributed: bool = False,
    setting: str = "auto",
    chunk_rows: int | None = None,
) -> FusedLoss | None:
    """The fused loss to use for `model` on `device`, or None for the model's own loss.

    `setting` is speed.fused_loss; `chunk_rows` speed.fused_loss_chunk_rows (None: DEFAULT_CHUNK_ROWS).
    """
    wanted = setting.strip().lower()
    if wanted == "off":
        return None
    if distributed:  # calling the decoder directly would bypass DistributedDataParallel's gradient sync
        return None
    if unsupported_reason(model) is not None:
        return None
    rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    text = _base(model).config
    text = text.get_text_config() if hasattr(text, "get_text_config") else text
    softcap = getattr(text, "final_logit_softcapping", None)
    on_cuda = device.startswith("cuda")
    if on_cuda and liger_available():
        return FusedLoss("liger", softcap, "liger-kernel fused linear cross-entropy", rows)
    if wanted == "on":
        reason = "chunked linear cross-entropy (PyTorch, recomputed per chunk)"
        return FusedLoss("chunked", softcap, reason, rows)
    return None


def _chunk_loss_sum(h: Any, weight: Any, targets: Any, softcap: float | None) -> Any:
    import torch.nn.functional as F

    logits = (h @ weight.t()).float()
    if softcap is not None:
        logits = (logits / softcap).tanh() * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_linear_cross_entropy_sum(h: Any, weight: Any, targets: Any, softcap: float | None) -> Any:
    """Summed cross-entropy of `h` @ weightᵀ, one chunk of logits at a time (recomputed in backward)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    rows = max(1, CHUNK_ELEMENTS // max(1, weight.shape[0]))
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], rows):
        part = checkpoint(
            _chunk_loss_sum,
            h[start : start + rows],
            weight,
            targets[start : start + rows],
            softcap,
            use_reentrant=False,
        )
        total = total + part
    return total


def liger_chunk_budget(rows: int, vocab: int, hidden: int, chunk_rows: int) -> int:
    """liger's `chunk_mem_const` that gives chunks of about `chunk_rows` rows for `rows` rows in all."""
    if chunk_rows <= 0:
        return 1
    pieces = max(1, -(-rows // chunk_rows))
    return max(1, -(-vocab // (pieces * hidden)))


def liger_linear_cross_entropy_sum(
    h: Any, weight: Any, targets: Any, softcap: float | None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Any:
    """Summed cross-entropy of `h` @ weightᵀ (softcapped) through liger-kernel, in chunks of `chunk_rows`."""
    import inspect

    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction as F

    if "chunk_mem_const" not in inspect.signature(F.forward).parameters:  # an older liger: its own sizing
        loss_fn = _liger_loss_class()(reduction="sum", softcap=softcap, ignore_index=IGNORE_INDEX)
        return loss_fn(weight, h, targets)
    budget = liger_chunk_budget(h.shape[0], weight.shape[0], weight.shape[1], chunk_rows)
    # positional, in liger 0.8's order: bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
    # reduction, softcap, return_z_loss, accum_dtype, use_token_scaling, return_token_accuracy,
    # return_predicted_tokens, ce_impl, ce_mode, chunk_mem_const
    out = F.apply(
        h, weight, targets, None, None, IGNORE_INDEX, 0.0, 0.0, "sum", softcap,
        False, None, False, False, False, None, None, budget,
    )  # fmt: skip
    return out[0]


def causal_lm_loss(
    model: Any,
    inputs: dict[str, Any],
    plan: FusedLoss,
    num_items_in_batch: Any = None,
) -> Any:
    """The model's causal-LM loss on `inputs` (with "labels"), computed without the full logits."""
    import torch.nn.functional as F

    base = _base(model)
    decoder = base.model
    head = base.get_output_embeddings()
    labels = inputs["labels"]
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = decoder(**rest, use_cache=False).last_hidden_state
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]  # no head work on prompt or padding positions
    if plan.impl == "liger":
        total = liger_linear_cross_entropy_sum(
            hidden.contiguous(), head.weight, targets, plan.softcap, plan.chunk_rows
        )
    else:
        total = chunked_linear_cross_entropy_sum(hidden, head.weight, targets, plan.softcap)
    if num_items_in_batch is not None:
        if hasattr(num_items_in_batch, "to"):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / keep.sum()
