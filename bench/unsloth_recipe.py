"""Unsloth's recipe for `bench.speed --recipes unsloth`: the same saved model, LoRA, data and tokens per step.

Unsloth's documented QLoRA path: `FastLanguageModel.from_pretrained(load_in_4bit=True)` (its own 4-bit
loading and patched kernels), `get_peft_model` with `use_gradient_checkpointing="unsloth"` (its offloaded
checkpointing), LoRA r16 alpha 32 dropout 0 on the same seven projections, and bitsandbytes' AdamW8bit
(its notebooks' `optim="adamw_8bit"`). The loss is the model's own, which Unsloth patches to its fused
cross-entropy when labels are given. Gemma 3n is loaded through `FastModel` when `FastLanguageModel` refuses
it (Unsloth routes multimodal families there).

Unsloth pins transformers ≤ 5.17, trl ≤ 1.15 and datasets < 5, so this recipe runs in its own process with
its own PYTHONPATH (`--unsloth-pythonpath`); it must be imported before transformers (`bench.speed` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_unsloth(model_dir: Path, seq: int, lr: float, targets: list[str], seed: int) -> Any:
    """(model, optimizer, None, None): Unsloth's model with LoRA, and AdamW8bit over its trainable weights."""
    import bitsandbytes as bnb
    import torch
    import unsloth
    from unsloth import FastLanguageModel

    print(f"[unsloth] unsloth {getattr(unsloth, '__version__', '?')}", flush=True)
    kwargs: dict[str, Any] = {
        "model_name": str(model_dir),
        "max_seq_length": seq,
        "load_in_4bit": True,
        "dtype": torch.bfloat16,
    }
    fast: Any = FastLanguageModel
    try:
        model, _ = FastLanguageModel.from_pretrained(**kwargs)
    except Exception as exc:  # noqa: BLE001  # Unsloth sends some families to FastModel
        why = f"{type(exc).__name__}: {exc}"
        print(f"[unsloth] FastLanguageModel refused ({why}); trying FastModel", flush=True)
        from unsloth import FastModel

        fast = FastModel
        model, _ = FastModel.from_pretrained(**kwargs)
    model = fast.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=seed,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    return model, bnb.optim.AdamW8bit(params, lr=lr), None, None
