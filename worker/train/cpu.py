"""CPU-only fixes for bitsandbytes layers.

On CPUs with AVX512-BF16, bitsandbytes' Linear4bit repacks its weight in place the first time it runs a
forward in eval mode without gradients (an evaluation or a generation). Every later backward through that
layer is then silently wrong (measured: median 94% gradient difference, loss stalls). Turning the repacking
off per layer keeps training correct; evaluation is a little slower on CPU, which does not matter at the
sizes that train on CPU.
"""

from __future__ import annotations

from typing import Any


def cpu_has_avx512_bf16() -> bool:
    """Whether bitsandbytes would repack 4-bit weights for this CPU (the trap is live only then)."""
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except (ImportError, AttributeError, OSError):
        return False


def disable_cpu_weight_repacking(model: Any) -> int:
    """Stop every bnb Linear4bit in `model` repacking its weight on an eval forward; return how many."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
