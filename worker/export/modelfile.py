"""An Ollama Modelfile for a GGUF export, carrying the run's chat template.

Ollama templates are Go templates over `.System`, `.Prompt` and `.Response`; the run's chat template is
Jinja. Rather than translate Jinja, the tokenizer renders one user turn whose text is a sentinel, and the
sentinel is replaced by `{{ .Prompt }}`: the Modelfile's TEMPLATE is then, character for character, what
the adapter saw in training for a single-turn chat (checked by `render` in the tests). The beginning-of-
sequence token is left out of the template because llama.cpp adds it when it tokenizes. Stop words are
the tokenizer's end-of-sequence token and the template's end-of-turn marker.

`validate` parses a Modelfile the way Ollama's parser reads one (instructions, quoting, FROM/ADAPTER
files present next to it) so an export never ships one that `ollama create` would reject.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SENTINEL = "\ue000TUNEBOARD-PROMPT\ue000"
INSTRUCTIONS = {"FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE", "MESSAGE", "REQUIRES"}
PARAMETERS = {
    "num_ctx", "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop", "num_predict",
    "top_k", "top_p", "min_p",
}  # fmt: skip
END_OF_TURN = ("<|eot_id|>", "<end_of_turn>", "<|im_end|>", "<|end|>")


class ModelfileError(ValueError):
    """A Modelfile Ollama would reject; the message names the line."""


def ollama_template(tokenizer: Any) -> str:
    """The single-turn Go template equivalent to the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return "{{ .Prompt }}{{ .Response }}"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    if text.count(SENTINEL) != 1 or '"""' in text or "{{" in text:
        raise ModelfileError("the chat template cannot be written as an Ollama template")
    return text.replace(SENTINEL, "{{ .Prompt }}") + "{{ .Response }}"


def stop_words(tokenizer: Any, template: str) -> list[str]:
    words = [w for w in END_OF_TURN if w in template or w == getattr(tokenizer, "eos_token", None)]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in words:
        words.append(eos)
    return words


def write_modelfile(folder: Path, gguf_name: str, tokenizer: Any, adapter_name: str | None = None) -> Path:
    """folder/Modelfile pointing at ./gguf_name (and ./adapter_name, a GGUF LoRA); validated before return."""
    template = ollama_template(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f'TEMPLATE """{template}"""')
    for word in stop_words(tokenizer, template):
        lines.append(f'PARAMETER stop "{word}"')
    lines.append("PARAMETER temperature 0")
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    validate(path)
    return path


def parse(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs; triple-quoted values may span lines (Ollama's syntax)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        line_end = text.find("\n", i)
        line_end = n if line_end < 0 else line_end
        line = text[i:line_end].strip()
        if not line or line.startswith("#"):
            i = line_end + 1
            continue
        match = re.match(r"([A-Za-z]+)\s+(.*)", text[i:line_end].lstrip())
        if match is None:
            raise ModelfileError(f"cannot read the line {line!r}")
        word = match.group(1).upper()
        if word not in INSTRUCTIONS:
            raise ModelfileError(f"unknown instruction {word!r}")
        rest_start = i + (len(text[i:line_end]) - len(text[i:line_end].lstrip())) + match.start(2)
        if text.startswith('"""', rest_start):
            close = text.find('"""', rest_start + 3)
            if close < 0:
                raise ModelfileError(f"{word}: a triple-quoted value is never closed")
            out.append((word, text[rest_start + 3 : close]))
            i = text.find("\n", close)
            i = n if i < 0 else i + 1
            continue
        out.append((word, match.group(2).strip()))
        i = line_end + 1
    return out


def validate(path: Path) -> list[tuple[str, str]]:
    """Parse `path` and check it: one FROM, files present, known parameters, a template with .Prompt."""
    pairs = parse(path.read_text(encoding="utf-8"))
    froms = [v for k, v in pairs if k == "FROM"]
    if len(froms) != 1:
        raise ModelfileError(f"a Modelfile needs exactly one FROM, this one has {len(froms)}")
    for key, value in pairs:
        if key in ("FROM", "ADAPTER") and value.startswith("./") and not (path.parent / value[2:]).is_file():
            raise ModelfileError(f"{key} names {value}, which is not next to the Modelfile")
        if key == "PARAMETER":
            name = value.split(None, 1)[0]
            if name not in PARAMETERS:
                raise ModelfileError(f"unknown parameter {name!r}")
        if key == "TEMPLATE" and "{{ .Prompt }}" not in value:
            raise ModelfileError("the TEMPLATE never places {{ .Prompt }}")
    return pairs


def render(template: str, prompt: str) -> str:
    """What Ollama sends for one user turn with this template (the test compares it with the tokenizer)."""
    return template.replace("{{ .Prompt }}", prompt).replace("{{ .Response }}", "")
