"""The recipe for every causal LM without its own: adapt the attention/MLP projections, keep the head."""

from __future__ import annotations

import re
from typing import Any

from worker.train.recipes.base import (
    PROJECTION_NAMES,
    Recipe,
    build_target_regex,
    check_patterns_match,
    linear_names,
    output_embedding_name,
    tower_prefixes,
    under_any,
)

# A Llama-3-style template with {% generation %} blocks so assistant-only loss can mask the prompt.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}<|eot_id|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)


def generic_recipe(model: Any) -> Recipe:
    """Build a recipe for any causal LM from its discovered Linear names."""
    linears = linear_names(model)
    head = output_embedding_name(model)
    towers = tower_prefixes(model)
    tower_linears = [n for n in linears if under_any(n, towers)]
    patterns = [re.escape(head)] if head else []
    patterns.extend(re.escape(t) for t in towers)
    must_keep = [*([head] if head else []), *tower_linears]
    check_patterns_match(linears, patterns, must_keep)

    candidates = [n for n in linears if n not in must_keep]
    targets = [n for n in candidates if n.rsplit(".", 1)[-1] in PROJECTION_NAMES]
    notes = [
        "The output head (lm_head) stays in full precision; LoRA adapts the attention and MLP projections."
    ]
    if not targets:
        # An unfamiliar naming scheme: adapt every Linear of the language model rather than nothing.
        targets = candidates
        notes.append(
            "No familiar projection names were found, so LoRA adapts every Linear layer except the head."
        )
    if towers:
        notes.append("Encoder towers (vision/audio) are kept out of 4-bit and are not adapted.")
    arch = type(model).__name__
    return Recipe(
        name="generic",
        architecture=arch,
        keep_in_full_precision=tuple(patterns),
        kept_linear_names=tuple(must_keep),
        lora_target_regex=build_target_regex(targets),
        lora_target_names=tuple(targets),
        attn_implementation="sdpa" if getattr(model, "_supports_sdpa", False) else "eager",
        chat_template=LLAMA_CHAT_TEMPLATE,
        supports_assistant_only_loss=True,
        notes=tuple(notes),
    )
