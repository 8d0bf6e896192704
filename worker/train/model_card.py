"""The README.md written next to a finished adapter: what it was trained from, how, and how to redo it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.config import JobConfig, config_to_dict


def render_model_card(
    *,
    cfg: JobConfig,
    base_model: str,
    dataset_fingerprint: str,
    dataset_format: str,
    num_train_rows: int,
    num_eval_rows: int,
    metrics: dict[str, Any],
    preflight_notes: Sequence[str],
    kept_in_full_precision: Sequence[str],
    command: str,
) -> str:
    """Markdown for the adapter's README.md: base model, data, metrics, preflight, how to redo it."""
    title = cfg.name or f"LoRA adapter for {cfg.model.name}"
    method = cfg.quantization.method
    quantized = method != "none"
    tags = "[tuneboard, lora, qlora]" if quantized else "[tuneboard, lora]"
    storage = (
        f"`{method}` quantization of the frozen base weights" if quantized else "un-quantized base weights"
    )
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {cfg.model.name}",
        f"tags: {tags}",
        "---",
        "",
        f"# {title}",
        "",
        f"A LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha:g}) trained by Tuneboard on "
        f"`{cfg.model.name}` with {storage}.",
        "",
        "## Base model",
        "",
        f"- model: `{cfg.model.name}`"
        + (f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""),
        f"- loaded from: `{base_model}`",
        f"- quantization: {method}"
        + (f" (double quant: {cfg.quantization.double_quant})" if quantized else ""),
        "",
        "## Data",
        "",
        f"- source: `{cfg.dataset.source}` (format: {dataset_format})",
        f"- rows: {num_train_rows} train, {num_eval_rows} eval",
        f"- fingerprint (sha256 of the rows): `{dataset_fingerprint}`",
        "",
        "## Final metrics",
        "",
    ]
    if metrics:
        lines += [
            f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(metrics.items())
        ]
    else:
        lines.append("- (none recorded)")
    lines += ["", "## Quantization", ""]
    if not quantized:
        lines.append("The base weights were not quantized (plain LoRA); the adapter can be merged into them.")
    elif kept_in_full_precision:
        lines.append("Module patterns kept in full precision (bitsandbytes `llm_int8_skip_modules`):")
        lines += [f"- `{p}`" for p in kept_in_full_precision]
    else:
        lines.append("No modules were kept out of quantization.")
    lines += ["", "## Preflight notes", ""]
    lines += [f"- {n}" for n in preflight_notes] if preflight_notes else ["- (none)"]
    lines += ["", "## Use it", ""]
    if quantized:
        lines += [
            "Load the base with the same quantization settings (`tuneboard_quantization.json` holds them), "
            "then attach the adapter:",
            "",
            "```python",
            "import json, torch",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, BitsAndBytesConfig",
            "q = json.load(open('tuneboard_quantization.json'))",
            "base = AutoModelForCausalLM.from_pretrained(",
            f"    '{cfg.model.name}',",
            "    quantization_config=BitsAndBytesConfig(",
            *(
                ["        load_in_8bit=True,"]
                if method == "int8"
                else [
                    "        load_in_4bit=True, bnb_4bit_quant_type=q['method'],",
                    "        bnb_4bit_use_double_quant=q['double_quant'],",
                    "        bnb_4bit_compute_dtype=torch.bfloat16,",
                ]
            ),
            "        llm_int8_skip_modules=q['llm_int8_skip_modules'],",
            "    ),",
            ")",
            "model = PeftModel.from_pretrained(base, 'path/to/this/adapter')",
            "```",
        ]
    else:
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"base = AutoModelForCausalLM.from_pretrained('{cfg.model.name}')",
            "model = PeftModel.from_pretrained(base, 'path/to/this/adapter')",
            "merged = model.merge_and_unload()  # optional: one plain model, no PEFT needed to run it",
            "```",
        ]
    lines += [
        "",
        "## Reproduce",
        "",
        f"The full config (seed {cfg.training.seed} included) is in `tuneboard_config.json` next to this "
        "file. "
        "Train it again with:",
        "",
        "```",
        command,
        "```",
        "",
        "or queue it on a Tuneboard dashboard: `curl -X POST http://HOST:8000/api/jobs "
        "-H 'Content-Type: application/json' --data @tuneboard_config.json`.",
        "",
        "```json",
        json.dumps(config_to_dict(cfg), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, **kwargs: Any) -> None:
    """Write render_model_card(**kwargs) to `path`."""
    path.write_text(render_model_card(**kwargs), encoding="utf-8")
