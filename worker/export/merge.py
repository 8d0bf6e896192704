"""Fold a run's LoRA adapter into a base, also for 4-bit runs, and keep the adapter as the parity reference.

A 4-bit (or 8-bit) run trained its adapter against the *dequantized* weights of its base: every forward
pass unpacked the nf4/fp4/int8 blocks to the compute dtype. Folding the adapter into those same weights
(the "dequantized" base) gives a plain model that computes what the adapter on its 4-bit base computed,
without quantizing the sum again (the loss PEFT's in-place 4-bit merge has). The "full" base is the
full-precision checkpoint the 4-bit weights were made from: its outputs differ from the trained
adapter's by the quantization error, which the adapter never saw.

The reference the parity check compares against is the adapter on the base the merge used: for
"dequantized" the adapter on the 4-bit base exactly as it was trained (bitsandbytes kernels), for "full"
the unmerged adapter on the full-precision base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.tasks.inference import AdapterInfo, attach_adapter, load_base

BASE_WORDS = {
    "dequantized": (
        "the dequantized {method} base: the adapter was folded into exactly the weights it was trained "
        "against (the {method} blocks unpacked to {dtype}), so the merged model computes what the adapter "
        "on its 4-bit base computed"
    ),
    "full": (
        "the full-precision base checkpoint: the adapter was folded into the original {dtype} weights, "
        "which differ from the {method} weights it was trained against by the quantization error"
    ),
    "none": "the base the adapter was trained on, which was not quantized ({dtype})",
}


@dataclass
class Merged:
    """The merged model, the adapter it came from (the parity reference) and which base was used."""

    model: Any  # plain transformers model, no PEFT (None when only the base was asked for)
    reference: Any  # the adapter on its base: what the export must agree with
    base: str  # "dequantized" | "full" | "none"
    words: str  # what that base means, for the page and the model card
    base_model: Any = None  # the unmerged base in full precision (keep_base): what a GGUF LoRA applies to


def resolve_base(method: str, requested: str) -> str:
    """Which base a run of quantization `method` is merged into for `requested` (auto|dequantized|full)."""
    if method == "none":
        return "none"
    return "dequantized" if requested == "auto" else requested


def _dequantized_weights(quantized: Any) -> dict[str, Any]:
    """{module name: dequantized weight} of every bitsandbytes Linear in `quantized`."""
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    out: dict[str, Any] = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            out[name] = dequantize_bnb_weight(module.weight, state=module.weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            out[name] = dequantize_bnb_weight(module.weight, state=module.state)
    return out


def load_dequantized(info: AdapterInfo, device: str) -> tuple[Any, Any]:
    """(the base as trained, 4-bit; the same base in full precision holding the dequantized weights)."""
    import torch

    quantized = load_base(info, device=device, quantized=True)
    plain = load_base(info, device=device, quantized=False)
    weights = _dequantized_weights(quantized)
    if not weights:
        raise RuntimeError(
            f"the {info.method} base loaded without a single quantized Linear; nothing to dequantize "
            "(export with base full instead)"
        )
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, weight in weights.items():
            target = modules.get(name)
            if target is None or tuple(target.weight.shape) != tuple(weight.shape):
                raise RuntimeError(f"the dequantized weight of {name} does not fit the full-precision model")
            target.weight.copy_(weight.to(target.weight.dtype))
    return quantized, plain


def merge_adapter(info: AdapterInfo, *, base: str, device: str, keep_base: bool = False) -> Merged:
    """The adapter folded into `base` (see resolve_base), with its reference for the parity check.

    keep_base: return the unmerged full-precision base instead of merging (for a GGUF LoRA).
    """
    words = BASE_WORDS[base].format(method=info.method, dtype=info.dtype)
    if base == "dequantized":
        quantized, plain = load_dequantized(info, device)
        reference = attach_adapter(quantized, info)
    else:  # "full" or "none": the reference is the unmerged adapter on a second copy of the same weights
        reference = attach_adapter(load_base(info, device=device, quantized=False), info)
        plain = load_base(info, device=device, quantized=False)
    if keep_base:
        return Merged(model=None, reference=reference, base=base, words=words, base_model=plain)
    merged = attach_adapter(plain, info).merge_and_unload()
    return Merged(model=merged.eval(), reference=reference, base=base, words=words)
