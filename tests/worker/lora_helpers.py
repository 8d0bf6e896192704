"""Small helpers for tests that look at LoRA gradients."""

from __future__ import annotations

from typing import Any


def give_every_adapter_a_gradient(model: Any, std: float = 0.1) -> None:
    """Draw LoRA B from N(0, std) in place: with PEFT's zero init, A would get no gradient."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
