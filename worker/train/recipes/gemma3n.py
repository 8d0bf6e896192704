"""Gemma 3n: what stays out of 4-bit, what LoRA adapts, and the vision-tower stand-in when timm is missing.

Measured facts behind this recipe (see the team's qlora-facts notes):
- AltUp clamps `prediction_coefs.weight.data` in place and feeds `correction_coefs.weight` straight into
  F.linear; packed 4-bit storage breaks both, so every AltUp Linear stays in full precision.
- A skip list replaces the default one, so the tied `lm_head` must be in it.
- Skip patterns match each Linear's own full name; a skipped parent does not protect its children, so
  patterns are written from the Linear names discovered on the model and then verified.
- The vision tower (timm MobileNet) and the audio conformer are never adapted by default and never packed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Iterator
from typing import Any

from worker.train.recipes.base import (
    PROJECTION_NAMES,
    Recipe,
    build_target_regex,
    check_patterns_match,
    generalize_names,
    linear_names,
    output_embedding_name,
    tower_prefixes,
    under_any,
)

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}<end_of_turn>{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{%- if loop.first and system -%}{{ system + '\n\n' }}{%- endif -%}"
    "{{ message['content'] | trim }}<end_of_turn>{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def timm_is_installed() -> bool:
    """Whether the timm package (needed by Gemma 3n's real vision tower) can be imported."""
    return importlib.util.find_spec("timm") is not None


def _stub_class() -> type:
    import torch

    class VisionTowerStub(torch.nn.Module):
        """Stands in for Gemma 3n's timm vision tower so the text path loads and trains without timm."""

        def __init__(self, config: Any) -> None:
            super().__init__()
            self.config = config

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(
                "this Gemma 3n model was loaded with a stand-in vision tower (timm is not installed), "
                "so it cannot read images; train on text, or install timm and use a real checkpoint"
            )

    return VisionTowerStub


_STUB: type | None = None


def vision_tower_stub_class() -> type:
    """The stand-in vision-tower module class (created once, lazily, so importing this stays torch-free)."""
    global _STUB
    if _STUB is None:
        _STUB = _stub_class()
    return _STUB


@contextlib.contextmanager
def timm_free_vision_tower(force: bool = False) -> Iterator[None]:
    """While active, Gemma 3n builds a stand-in vision tower when timm is missing (or `force`)."""
    if timm_is_installed() and not force:
        yield
        return
    from transformers.models.gemma3n import modeling_gemma3n

    real_auto = modeling_gemma3n.AutoModel
    stub = vision_tower_stub_class()

    class _AutoModelWithStub:
        @staticmethod
        def from_config(config: Any, **kwargs: Any) -> Any:
            if type(config).__name__ in ("Gemma3nVisionConfig", "TimmWrapperConfig"):
                return stub(config)
            return real_auto.from_config(config, **kwargs)

    modeling_gemma3n.AutoModel = _AutoModelWithStub  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        modeling_gemma3n.AutoModel = real_auto  # type: ignore[misc]


def is_gemma3n(config: Any) -> bool:
    """True for Gemma 3n text and multimodal configs."""
    return str(getattr(config, "model_type", "")).startswith("gemma3n")


def gemma3n_recipe(model: Any) -> Recipe:
    """Build the Gemma 3n recipe from an instantiated model (meta device is fine)."""
    arch = type(model).__name__
    linears = linear_names(model)

    altup_parents = [n for n, m in model.named_modules() if type(m).__name__.endswith("AltUp")]
    altup_linears = [n for n in linears if any(n.startswith(p + ".") for p in altup_parents)]
    head = output_embedding_name(model)
    towers = tower_prefixes(model)
    tower_linears = [n for n in linears if under_any(n, towers)]

    # Patterns from discovered names: AltUp Linears generalised over the layer index, the head by name,
    # each tower by its own prefix (the loader matches a prefix up to a module boundary).
    patterns = generalize_names(altup_linears)
    if head:
        patterns.append(re.escape(head))
    patterns.extend(re.escape(t) for t in towers)  # a prefix keeps everything below it (module boundary)
    must_keep = [*altup_linears, *([head] if head else []), *tower_linears]
    check_patterns_match(linears, patterns, must_keep)

    targets = [
        n
        for n in linears
        if n.rsplit(".", 1)[-1] in PROJECTION_NAMES[:7]
        and ".layers." in n
        and not under_any(n, towers)
        and n not in must_keep
    ]
    # The text model scales its per-layer projection's output in place (`per_layer_projection *= ...`);
    # an 8-bit layer's output is an autograd view that forbids that (seen on CUDA), so 8-bit keeps it.
    int8_keep = [
        n
        for n in linears
        if n.rsplit(".", 1)[-1] == "per_layer_model_projection" and not under_any(n, towers)
    ]
    multimodal = bool(towers)
    stub = vision_tower_stub_class()
    real_vision = multimodal and not any(isinstance(m, stub) for m in model.modules())
    notes = [
        f"AltUp's {len(altup_linears)} small Linear layers stay in full precision: it clamps and reads their "
        "weights directly, which packed 4-bit storage cannot do.",
        "The tied output head (lm_head) stays in full precision: it shares the embedding table.",
        "Frozen weights that 4-bit does not pack stay in the compute dtype (no fp32 upcast), which saves "
        "several GB on the per-layer embedding tables of the real models.",
    ]
    if multimodal:
        notes.append(
            "The audio and vision towers and their embedders are kept out of 4-bit and are not adapted; "
            "LoRA trains the language model only."
        )
        if real_vision:
            notes.append(
                "timm's vision tower needs eager attention, so the whole model uses eager attention."
            )
        else:
            notes.append(
                "The vision tower is a stand-in (timm is not installed, or this is a preset), so image "
                "inputs are not supported; text trains as usual."
            )
    return Recipe(
        name="gemma3n",
        architecture=arch,
        keep_in_full_precision=tuple(patterns),
        kept_linear_names=tuple(must_keep),
        lora_target_regex=build_target_regex(targets),
        lora_target_names=tuple(targets),
        # Text-only Gemma 3n trains with sdpa (measured faster); only timm's vision tower needs eager.
        attn_implementation="eager" if real_vision else "sdpa",
        chat_template=GEMMA_CHAT_TEMPLATE,
        supports_assistant_only_loss=True,
        needs_vision_stub=multimodal,
        keep_for_int8=tuple(generalize_names(int8_keep)),
        notes=tuple(notes),
    )
