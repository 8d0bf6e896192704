"""The README.md written next to a finished adapter: what it was trained from, how, and how to redo it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.config import JobConfig, config_to_dict


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
    """Markdown for the adapter's README.md."""
    title = cfg.name or f"LoRA adapter for {cfg.model.name}"
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {cfg.model.name}",
        "tags: [tuneboard, lora, qlora]",
        "---",
        "",
        f"# {title}",
        "",
        f"A LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha:g}) trained by Tuneboard on "
        f"`{cfg.model.name}` (loaded from `{base_model}`) with `{cfg.quantization.method}` quantization of "
        "the frozen base weights.",
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
    if kept_in_full_precision:
        lines.append("Module patterns kept in full precision (bitsandbytes `llm_int8_skip_modules`):")
        lines += [f"- `{p}`" for p in kept_in_full_precision]
    else:
        lines.append("No modules were kept out of quantization.")
    if preflight_notes:
        lines += ["", "## Preflight notes", ""]
        lines += [f"- {n}" for n in preflight_notes]
    lines += [
        "",
        "## Use it",
        "",
        "Load the base model with the same quantization settings (the skip list above), then:",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, 'path/to/this/adapter')",
        "```",
        "",
        "## Reproduce",
        "",
        "The full config is in `tuneboard_config.json` next to this file:",
        "",
        "```",
        command,
        "```",
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
