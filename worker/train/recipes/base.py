"""The Recipe dataclass and the module-discovery helpers every architecture recipe shares.

A recipe never guesses module paths: it walks an instantiated model (meta device or tiny) and writes
skip patterns and LoRA targets from the names it found, then checks the patterns really match them
with the same rule bitsandbytes loading uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Projections a LoRA adapter targets by default, in every architecture we know of.
PROJECTION_NAMES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    # other families' spellings of the same projections
    "query_key_value",
    "qkv_proj",
    "gate_up_proj",
    "c_attn",
    "c_proj",
    "c_fc",
    "wq",
    "wk",
    "wv",
    "wo",
    "w1",
    "w2",
    "w3",
    "fc1",
    "fc2",
    "dense",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "W_pack",
)

# Attribute names of encoder towers that LoRA must leave alone unless asked, and 4-bit must not pack.
TOWER_NAMES = (
    "vision_tower",
    "audio_tower",
    "vision_model",
    "visual",
    "audio_model",
    "embed_vision",
    "embed_audio",
    "multi_modal_projector",
    "mm_projector",
)


@dataclass(frozen=True)
class Recipe:
    """What one architecture needs to train under QLoRA: kept modules, LoRA targets, kernels, template."""

    name: str  # "gemma3n" or "generic"
    architecture: str  # e.g. "Gemma3nForCausalLM"
    # Patterns for BitsAndBytesConfig(llm_int8_skip_modules=...): the complete list (it replaces the default).
    keep_in_full_precision: tuple[str, ...]
    # Full names of the nn.Linear modules those patterns keep (for reports and post-load checks).
    kept_linear_names: tuple[str, ...]
    # A regex PEFT full-matches against module names (language-model projections only).
    lora_target_regex: str
    # Full names of the modules that regex selects, discovered on the model.
    lora_target_names: tuple[str, ...]
    attn_implementation: str  # what "auto" resolves to
    gpu_dtype: str = "bfloat16"  # dtype of non-quantized weights on GPU ("auto")
    cpu_dtype: str = "float32"  # bitsandbytes' CPU kernels and torch CPU matmuls are fp32-friendly
    chat_template: str | None = None  # used when the tokenizer has none
    supports_assistant_only_loss: bool = True  # needs a template with {% generation %} blocks
    needs_vision_stub: bool = False  # the vision tower needs timm; stub it when timm is missing
    # Extra patterns for 8-bit only: bitsandbytes' 8-bit matmul returns a view that must not be changed in
    # place, which some architectures do to a projection's output.
    keep_for_int8: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # plain-words explanations for the run page

    def skip_modules(self, extra: Iterable[str] = (), method: str = "nf4") -> list[str]:
        """The full llm_int8_skip_modules list for `method`: the recipe's patterns plus `extra`."""
        out: list[str] = []
        own = (*self.keep_in_full_precision, *(self.keep_for_int8 if method == "int8" else ()))
        for pattern in (*own, *extra):
            if pattern and pattern not in out:
                out.append(pattern)
        return out


def pattern_keeps(full_name: str, patterns: Sequence[str]) -> bool:
    """True when `patterns` keep the Linear `full_name` un-quantized, by the loader's own matching rule."""
    try:  # transformers ≥ 5.23 exposes the rule it applies; use it so we can never disagree with it
        from transformers.quantizers.quantizers_utils import should_convert_module

        return not should_convert_module(full_name, list(patterns))
    except ImportError:  # older releases: prefix/regex/suffix matching without the module boundary
        return any(re.match(p, full_name) or full_name.endswith(p) for p in patterns)


def generalize_names(names: Iterable[str]) -> list[str]:
    """Turn discovered module names into compact anchored regexes: numeric path segments become \\d+."""
    out: list[str] = []
    for name in names:
        parts = [r"\d+" if part.isdigit() else re.escape(part) for part in name.split(".")]
        pattern = r"\.".join(parts)
        if pattern not in out:
            out.append(pattern)
    return out


def linear_names(model: Any) -> list[str]:
    """Full names of every nn.Linear (or subclass) in the model, in module order."""
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def output_embedding_name(model: Any) -> str | None:
    """The module name of the LM head (`lm_head` for most models), found by identity, not by guessing."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return name
    return None


def tower_prefixes(model: Any) -> list[str]:
    """Module names of encoder towers and their embedders (vision, audio, projectors) in the model."""
    found: list[str] = []
    for name, _ in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in TOWER_NAMES and not any(name.startswith(p + ".") for p in found):
            found.append(name)
    return found


def under_any(name: str, prefixes: Iterable[str]) -> bool:
    """True when `name` is one of `prefixes` or lives below one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_patterns_match(
    all_linears: Sequence[str], patterns: Sequence[str], must_keep: Sequence[str]
) -> None:
    """Raise if the skip patterns fail to keep a module they are meant to keep (the seed's bug)."""
    missed = [n for n in must_keep if not pattern_keeps(n, patterns)]
    if missed:
        raise RuntimeError(
            f"recipe bug: skip patterns {list(patterns)} do not match {missed[:5]}; "
            "report this with the model name — the modules would be quantized and training would fail"
        )
    unknown = set(must_keep) - set(all_linears)
    if unknown:
        raise RuntimeError(f"recipe bug: {sorted(unknown)[:5]} are not Linear modules of this model")


def build_target_regex(names: Sequence[str]) -> str:
    """One regex PEFT full-matches, covering exactly the generalized forms of `names`."""
    patterns = generalize_names(names)
    if not patterns:
        return r"(?!)"  # matches nothing; the caller reports that no target was found
    return "(?:" + "|".join(patterns) + ")"


def causal_lm_class(config: Any) -> Any:
    """The class the loader builds for `config`: its own generative architecture, else AutoModelForCausalLM.

    The recipe discovers names on the same class the weights are loaded into, so they always agree.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is not None and arch.endswith(("ForCausalLM", "ForConditionalGeneration")):
        return cls
    return AutoModelForCausalLM


def instantiate_on_meta(config: Any, trust_remote_code: bool = False, force_vision_stub: bool = False) -> Any:
    """Build the model skeleton on the meta device (no memory, no weights) to discover module names."""
    import torch

    from worker.train.recipes.gemma3n import timm_free_vision_tower

    cls = causal_lm_class(config)
    with torch.device("meta"), timm_free_vision_tower(force=force_vision_stub):
        if hasattr(cls, "_from_config"):
            return cls._from_config(config)
        return cls.from_config(config, trust_remote_code=trust_remote_code)
