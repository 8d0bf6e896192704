"""Save a Gemma 3n text model with real E2B / E4B dimensions and random weights (no download needed).

    python bench/gemma3n_dims.py --size e2b --out /some/dir

The weights are random (std 0.02), so the loss starts near ln(vocab) and the run measures speed and
memory, not quality. The tokenizer is the tiny-gemma3n preset's (its ids are a subset of the vocabulary).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SIZES = {
    # from transformers' Gemma3nTextConfig defaults (E4B) and the E2B model card dims
    "e2b": {"num_hidden_layers": 30, "intermediate_size": 8192, "num_kv_shared_layers": 10},
    "e4b": {"num_hidden_layers": 35, "intermediate_size": 16384, "num_kv_shared_layers": 15},
}


def gemma3n_text_config(size: str):  # type: ignore[no-untyped-def]
    """A Gemma3nTextConfig with the real dims of `size` (e2b | e4b)."""
    from transformers import Gemma3nTextConfig

    dims = SIZES[size]
    n = dims["num_hidden_layers"]
    pattern = ["sliding_attention"] * 4 + ["full_attention"]
    return Gemma3nTextConfig(  # type: ignore[call-arg]
        num_hidden_layers=n,
        intermediate_size=[dims["intermediate_size"]] * n,
        num_kv_shared_layers=dims["num_kv_shared_layers"],
        layer_types=[pattern[i % 5] for i in range(n)],
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * (n - 10),
        torch_dtype="bfloat16",
    )


def save_random_model(size: str, out: Path) -> Path:
    """Build the model on the GPU when there is one (fast init), save it as bf16 safetensors."""
    import torch
    from transformers import AutoTokenizer, Gemma3nForCausalLM

    from worker.presets import preset_model_dir

    config = gemma3n_text_config(size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.time()
    torch.manual_seed(0)  # the same weights on every machine, so runs in separate calls compare
    with torch.device(device):
        model = Gemma3nForCausalLM(config).to(dtype=torch.bfloat16)  # type: ignore[call-arg]
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(preset_model_dir("tiny-gemma3n")).save_pretrained(out)
    print(
        f"saved Gemma 3n {size.upper()} dims, {params / 1e9:.2f} B params, "
        f"in {time.time() - start:.0f} s → {out}"
    )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="e2b")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    save_random_model(args.size, args.out)


if __name__ == "__main__":
    main()
