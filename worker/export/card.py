"""The README.md (model card) of an export, and the size + sha256 of every file it ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.export.llamacpp import file_sha256
from worker.export.parity import PROMPTS, describe

USAGE = {
    "merged": [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')",
        "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')",
        "```",
    ],
    "gguf": [
        "```sh",
        "llama-cli -m {gguf}            # llama.cpp",
        "ollama create my-model -f Modelfile && ollama run my-model   # Ollama, in this folder",
        "```",
    ],
    "gguf-lora": [
        "```sh",
        "llama-cli -m {base} --lora {gguf}   # llama.cpp: the LoRA applied on the base GGUF",
        "ollama create my-model -f Modelfile   # Ollama: FROM the base, ADAPTER the LoRA",
        "```",
    ],
}


def list_files(folder: Path) -> list[dict[str, Any]]:
    """[{name, size, sha256}] of every regular file directly in `folder`, sorted by name."""
    return [
        {"name": p.name, "size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    ]


def render_card(
    *,
    name: str,
    fmt: str,
    quant: str,
    base_model: str,
    base: str,
    base_words: str,
    parity: dict[str, Any],
    gguf: str | None = None,
    base_gguf: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """The export's model card: what it is, which base the adapter went into, and its parity numbers."""
    tol = parity["tolerance"]
    usage = [line.format(gguf=gguf or "", base=base_gguf or "") for line in USAGE.get(fmt, [])]
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: " + ("transformers" if fmt == "merged" else "gguf"),
        "tags: [tuneboard, lora" + (", gguf" if fmt != "merged" else "") + "]",
        "---",
        f"# {base_model} + a Tuneboard LoRA adapter: {name}",
        "",
        f"Format: **{fmt}**" + (f", {quant}" if fmt != "merged" else "") + ".",
        "",
        f"Which base the adapter went into: {base_words}.",
        "",
        "## Parity with the adapter",
        "",
        describe(parity) + ".",
        "",
        f"- greedy-token agreement: {parity['agreement']:.4f} (tolerance >= {tol['min_agreement']})",
        f"- largest logit difference: {parity['max_logit_diff']:.5g} (tolerance <= {tol['max_logit_diff']})",
        f"- why this tolerance: {tol['why']}",
        f"- positions compared: {parity['positions']} (teacher-forced, from the last prompt token on)",
        "- reference: the LoRA adapter on its base, run with transformers + PEFT",
        *(
            [f"- llama.cpp tokenizes the prompts as the run's tokenizer does: {parity['tokenizer_match']}"]
            if "tokenizer_match" in parity
            else []
        ),
        "- held-out prompts:",
        *[f"  - {p}" for p in PROMPTS],
        "",
        "## Use it",
        "",
        *usage,
        "",
    ]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)
