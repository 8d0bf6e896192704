"""Tiny preset models and generated datasets, built locally: no download, no hub.

A preset model is built once from a config with random weights (initialised so LoRA on a frozen 4-bit base
can actually learn), saved with a byte-level tokenizer and a chat template, and cached. Building happens in
a temporary directory that is renamed into place, so concurrent builders never see half a preset.
Torch is imported inside functions only.

`tiny-gemma3n-multimodal` is the real Gemma3nForConditionalGeneration layout (audio conformer, embedders,
language model) with a stand-in module where the timm vision tower would be: timm is not a dependency,
and its MobileNet would add 300M random parameters. The text path trains as usual; image inputs raise a
clear error. The catalogue's note for this preset says the same.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.catalog import PRESET_DATASETS, PRESET_MODELS

# Bump when a builder, an init rule, a tokenizer or a template changes: old cached presets are then ignored.
PRESET_VERSION = 4  # 4: the tiny presets' chat templates render tools
_BUILD_LOCK = threading.Lock()
READY_MARKER = "tuneboard_preset.json"  # written last inside the temp dir; its presence means "complete"

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
LLAMA_SPECIALS = [
    "<|pad|>",
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<|unk|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def default_cache_dir() -> Path:
    """Where presets are cached: $TUNEBOARD_CACHE_DIR/presets, else ~/.cache/tuneboard/presets."""
    env = os.environ.get("TUNEBOARD_CACHE_DIR")
    if env:
        return Path(env) / "presets"
    return Path.home() / ".cache" / "tuneboard" / "presets"


def is_preset_dir(path: Path) -> bool:
    """True when `path` holds a complete Tuneboard preset."""
    return (path / READY_MARKER).is_file()


def preset_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The directory of preset model `name` (config, weights, tokenizer), building it if missing."""
    if name not in PRESET_MODELS:
        known = ", ".join(PRESET_MODELS)
        raise ValueError(f"unknown preset model {name!r}; available presets: {known}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{name}-v{PRESET_VERSION}"
    if is_preset_dir(target):
        return target
    # Threads of one process build one at a time (transformers' lazy imports are not thread-safe);
    # separate processes race safely through the atomic rename below.
    with _BUILD_LOCK:
        if not is_preset_dir(target):
            _build_into(name, root, target)
    return target


def _build_into(name: str, root: Path, target: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=root))
    try:
        _BUILDERS[name](tmp)
        info = {"preset": name, "version": PRESET_VERSION, "architecture": PRESET_MODELS[name].architecture}
        (tmp / READY_MARKER).write_text(json.dumps(info), encoding="utf-8")
        if target.exists() and not is_preset_dir(target):
            shutil.rmtree(target, ignore_errors=True)  # left by an interrupted copy; never complete
        try:
            os.rename(tmp, target)  # atomic; fails if another builder got there first
        except OSError:
            if not is_preset_dir(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- tokenizers


def _byte_tokenizer(specials: list[str], bos: str, eos: str, pad: str, unk: str, chat_template: str) -> Any:
    """A byte-level tokenizer (special tokens + 256 bytes, no merges): every letter is its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    # Plain text gets a BOS like the real models; chat templates write their own BOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=[s for s in specials if s not in (bos, eos, pad, unk)],
    )
    fast.chat_template = chat_template
    fast.model_max_length = 512
    return fast


def gemma_tokenizer() -> Any:
    """Byte-level tokenizer with Gemma's special tokens and turn markers."""
    from worker.datasets.templates import GEMMA_TOOL_CHAT_TEMPLATE  # the recipe's, plus tools

    return _byte_tokenizer(GEMMA_SPECIALS, "<bos>", "<eos>", "<pad>", "<unk>", GEMMA_TOOL_CHAT_TEMPLATE)


def llama_tokenizer() -> Any:
    """Byte-level tokenizer with Llama-3-style header and end-of-turn tokens."""
    from worker.datasets.templates import LLAMA_TOOL_CHAT_TEMPLATE  # the recipe's, plus tools

    return _byte_tokenizer(
        LLAMA_SPECIALS, "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>", LLAMA_TOOL_CHAT_TEMPLATE
    )


# ---------------------------------------------------------------------------------------------- models

TINY_VOCAB = 512


def tiny_gemma3n_text_config(**overrides: Any) -> Any:
    """The Gemma 3n text config of the presets: hidden 64, 4 layers, vocab 512 (dims multiples of 64)."""
    from transformers import Gemma3nTextConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB,
        vocab_size_per_layer_input=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        hidden_size_per_layer_input=64,
        laurel_rank=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        sliding_window=64,
        max_position_embeddings=PRESET_MODELS["tiny-gemma3n"].max_seq_len,
        activation_sparsity_pattern=[0.0] * 4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    kwargs.update(overrides)
    return Gemma3nTextConfig(**kwargs)


def tiny_gemma3n_multimodal_config() -> Any:
    """Gemma 3n with a shrunk audio conformer and a (stand-in) vision tower around the tiny text model."""
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nVisionConfig

    audio = Gemma3nAudioConfig(
        hidden_size=64,
        input_feat_size=32,
        conf_num_hidden_layers=1,
        conf_num_attention_heads=2,
        sscp_conv_channel_size=(32, 32),
    )
    vision = Gemma3nVisionConfig(hidden_size=64)
    return Gemma3nConfig(text_config=tiny_gemma3n_text_config(), vision_config=vision, audio_config=audio)


def _learnable_gemma_init(model: Any) -> None:
    """Init that lets LoRA learn on a frozen random base in a few dozen steps (measured, see below)."""
    import torch

    with torch.no_grad():
        embed = model.get_input_embeddings()
        embed.weight.normal_(0.0, 0.5)  # the tied lm_head reads this table: confident logits become reachable
        for name, module in model.named_modules():
            if type(module).__name__.endswith("AltUp"):
                # stock init is 0: the layer output would be scaled away
                module.correct_output_scale.fill_(1.0)
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("q_norm", "k_norm"):
                # Gemma 3n attends with scaling 1.0 on RMS-normed q and k: with unit norm weights the random
                # scores have std ~sqrt(head_dim) and each query puts ~0.7 of its weight on one arbitrary
                # token (entropy 0.9 nats vs 3.4 uniform), so the softmax passes almost no gradient to the
                # token that matters. 0.3 starts attention soft enough for LoRA to learn where to look.
                module.weight.fill_(0.3)
            elif leaf in ("post_attention_layernorm", "post_feedforward_layernorm"):
                # Each sublayer's output is RMS-normed before the residual add, while the input embedding
                # is scaled by sqrt(hidden) (std 0.5 * 8 = 4 per dim): at weight 1 every layer adds a vector
                # 4x smaller than the token's own embedding, and the output mostly echoes the current token.
                module.weight.fill_(4.0)


def _save(model: Any, tokenizer: Any, out: Path, eos_ids: list[int]) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=model.config.get_text_config().bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=model.config.get_text_config().pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _seeded(build: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):  # same weights every build, caller's RNG untouched
            torch.manual_seed(0)
            build(out)

    return run


@_seeded
def _build_tiny_gemma3n(out: Path) -> None:
    from transformers import Gemma3nForCausalLM

    tok = gemma_tokenizer()
    model = Gemma3nForCausalLM(tiny_gemma3n_text_config())
    _learnable_gemma_init(model)
    _save(model, tok, out, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")])


@_seeded
def _build_tiny_gemma3n_multimodal(out: Path) -> None:
    from transformers import Gemma3nForConditionalGeneration

    from worker.train.recipes.gemma3n import timm_free_vision_tower

    tok = gemma_tokenizer()
    # Always the stand-in tower for this preset: timm's MobileNet would add 300M random parameters.
    with timm_free_vision_tower(force=True):
        model = Gemma3nForConditionalGeneration(tiny_gemma3n_multimodal_config())
    _learnable_gemma_init(model)
    _save(model, tok, out, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")])


def tiny_llama_config(**overrides: Any) -> Any:
    """The Llama config of the tiny-llama preset: hidden 128, 4 layers, vocab 512."""
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=PRESET_MODELS["tiny-llama"].max_seq_len,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


@_seeded
def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    tok = llama_tokenizer()
    model = LlamaForCausalLM(tiny_llama_config())
    with torch.no_grad():
        # Tied, frozen head: a wider table than the stock 0.02 makes confident logits reachable. Llama has
        # no embedding scale or logit softcap, so 0.15 (measured: loss 18 → 4.3 in 12 steps) rather than
        # Gemma's 0.5, which would start at a loss of ~60 here.
        embed: Any = model.get_input_embeddings()
        embed.weight.normal_(0.0, 0.15)
    _save(model, tok, out, [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")])


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-gemma3n": _build_tiny_gemma3n,
    "tiny-gemma3n-multimodal": _build_tiny_gemma3n_multimodal,
    "tiny-llama": _build_tiny_llama,
}
assert set(_BUILDERS) == set(PRESET_MODELS), "every catalog preset model needs a builder"


# ---------------------------------------------------------------------------------------------- datasets


def _word(rng: random.Random, lo: int = 3, hi: int = 6) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _reverse_letters(rng: random.Random) -> dict[str, Any]:
    word = _word(rng)
    return {
        "messages": [
            {"role": "user", "content": f"Reverse the letters: {word}"},
            {"role": "assistant", "content": word[::-1]},
        ]
    }


def _uppercase_completion(rng: random.Random) -> dict[str, Any]:
    word = _word(rng)
    return {"prompt": f"Upper case: {word} ->", "completion": f" {word.upper()}"}


def _counting_text(rng: random.Random) -> dict[str, Any]:
    start = rng.randint(0, 90)
    length = rng.randint(4, 8)
    return {"text": f"Count from {start}: " + " ".join(str(start + i) for i in range(length))}


# A small fixed lookup: the answer depends on one word of the question, so learning it means routing that
# word to the answer, which a frozen random base with LoRA does within the demo's steps (measured; reversing
# random letters needs position-relative attention it does not find in a few hundred examples).
CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Russia": "Moscow",
    "Canada": "Ottawa",
    "Ghana": "Accra",
    "Nepal": "Kathmandu",
    "Poland": "Warsaw",
}


def _country_capitals(rng: random.Random) -> dict[str, Any]:
    country = rng.choice(sorted(CAPITALS))
    return {
        "messages": [
            {"role": "user", "content": f"Capital of {country}?"},
            {"role": "assistant", "content": CAPITALS[country]},
        ]
    }


def _uppercase_preference(rng: random.Random) -> dict[str, Any]:
    # The rule the chosen answer follows and the rejected one breaks: repeat the word in upper case. It is
    # a property of every answer token, so a tiny model learns it from ~30 DPO steps and it holds for words
    # it never saw (held-out pairs); chosen and rejected have the same length, so log-probs compare fairly.
    word = _word(rng)
    return {"prompt": f"Shout the word: {word}", "chosen": word.upper(), "rejected": word}


_DATASETS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "reverse-letters": _reverse_letters,
    "uppercase-completion": _uppercase_completion,
    "counting-text": _counting_text,
    "country-capitals": _country_capitals,
    "uppercase-preference": _uppercase_preference,
}
assert set(_DATASETS) == set(PRESET_DATASETS), "every catalog preset dataset needs a generator"


def generate_dataset(name: str, num_rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """`num_rows` rows of preset dataset `name`, the same rows for the same seed."""
    if name not in _DATASETS:
        known = ", ".join(PRESET_DATASETS)
        raise ValueError(f"unknown preset dataset {name!r}; available: {known}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be at least 0 (got {num_rows})")
    rng = random.Random(f"{name}:{seed}")
    return [_DATASETS[name](rng) for _ in range(num_rows)]
