"""Recipes keep the right modules out of 4-bit with patterns that match real names, and adapt only the LM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contract.config import demo_config
from worker.train.recipes import recipe_for
from worker.train.recipes.base import pattern_keeps


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _e2b_text_config() -> object:
    from transformers import Gemma3nTextConfig

    # Gemma 3n E2B's text dimensions (qlora-facts: 30 layers, FFN 8192, 10 KV-shared layers).
    return Gemma3nTextConfig(
        num_hidden_layers=30,
        intermediate_size=8192,
        num_kv_shared_layers=10,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 6,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20,
        architectures=["Gemma3nForCausalLM"],
    )


def test_the_gemma3n_recipe_keeps_every_altup_linear_and_the_head_of_the_full_size_text_model() -> None:
    from worker.train.recipes.base import instantiate_on_meta, linear_names

    config = _e2b_text_config()
    model = instantiate_on_meta(config)
    recipe = recipe_for(model)
    altup = [n for n in linear_names(model) if ".altup." in n]
    assert len(altup) == 30 * 3
    assert all(pattern_keeps(n, recipe.keep_in_full_precision) for n in [*altup, "lm_head"])
    # the decoder's own projections stay quantizable
    assert not pattern_keeps("model.layers.0.self_attn.q_proj", recipe.keep_in_full_precision)
    assert not pattern_keeps("model.altup_projections.0", recipe.keep_in_full_precision)
    # 7 projections per layer, minus k/v on the KV-shared layers (they reuse an earlier layer's cache)
    assert len(recipe.lora_target_names) == 30 * 7 - 10 * 2


def test_the_seed_skip_list_does_not_match_altup_under_the_loader_rule() -> None:
    # The seed's ["altup", "lm_head"]: a skipped parent name does not protect its Linear children.
    assert not pattern_keeps("model.layers.3.altup.prediction_coefs", ["altup", "lm_head"])
    assert pattern_keeps("lm_head", ["altup", "lm_head"])


def test_the_multimodal_recipe_keeps_towers_and_embedders_unpacked_and_adapts_only_the_language_model() -> (
    None
):
    from transformers import Gemma3nConfig

    from worker.train.recipes.base import instantiate_on_meta, linear_names

    config = Gemma3nConfig(text_config=_e2b_text_config(), architectures=["Gemma3nForConditionalGeneration"])
    model = instantiate_on_meta(config)
    recipe = recipe_for(model)
    names = linear_names(model)
    towers = [
        n for n in names if n.startswith(("model.audio_tower.", "model.embed_audio.", "model.embed_vision."))
    ]
    assert towers, "the audio tower and embedders have Linear layers to protect"
    altup = [n for n in names if n.startswith("model.language_model.layers.") and ".altup." in n]
    assert len(altup) == 90
    assert all(pattern_keeps(n, recipe.keep_in_full_precision) for n in [*towers, *altup, "lm_head"])
    assert recipe.lora_target_names
    assert all(n.startswith("model.language_model.layers.") for n in recipe.lora_target_names)


@pytest.mark.parametrize("preset", ["tiny-gemma3n", "tiny-gemma3n-multimodal"])
def test_loaded_gemma_presets_have_altup_and_head_unquantized_and_no_adapter_on_a_tower(preset: str) -> None:
    import bitsandbytes as bnb
    import torch

    from worker.train.loading import load_for_training

    cfg = demo_config()
    cfg.model.name = f"preset:{preset}"
    loaded = load_for_training(cfg, device="cpu")
    base = loaded.model.get_base_model()
    modules = dict(base.named_modules())
    altup = [n for n in modules if ".altup." in n and isinstance(modules[n], torch.nn.Linear)]
    assert len(altup) == 4 * 3
    packed = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    assert not any(isinstance(modules[n], packed) for n in altup)
    assert not isinstance(modules["lm_head"], packed)
    # quantization did happen where it should
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in modules.values()) >= 4
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in loaded.model.named_parameters() if ".lora_" in n}
    assert adapted
    assert not [n for n in adapted if "tower" in n or "embed_vision" in n or "embed_audio" in n]
    if preset.endswith("multimodal"):
        audio = [
            n
            for n, m in modules.items()
            if n.startswith("model.audio_tower.") and isinstance(m, torch.nn.Linear)
        ]
        assert audio and not any(isinstance(modules[n], packed) for n in audio)


def test_the_generic_recipe_targets_llama_projections_and_keeps_the_head() -> None:
    from transformers import LlamaConfig

    recipe = recipe_for(LlamaConfig(num_hidden_layers=3, architectures=["LlamaForCausalLM"]))
    assert recipe.name == "generic"
    assert recipe.keep_in_full_precision == ("lm_head",)
    suffixes = {n.rsplit(".", 1)[-1] for n in recipe.lora_target_names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(recipe.lora_target_names) == 3 * 7


def test_8bit_loading_also_keeps_gemmas_in_place_scaled_projection() -> None:
    # On CUDA, bitsandbytes' 8-bit output is a view that Gemma 3n scales in place (seen on an H100 and
    # located by preflight there); CPU int8 does not fail, so this checks the recipe's answer is applied.
    import bitsandbytes as bnb

    from worker.train.loading import load_for_training

    cfg = demo_config()
    cfg.quantization.method = "int8"
    loaded = load_for_training(cfg, device="cpu")
    base = dict(loaded.model.get_base_model().named_modules())
    assert not isinstance(base["model.per_layer_model_projection"], bnb.nn.Linear8bitLt)
    assert isinstance(base["model.layers.0.mlp.up_proj"].base_layer, bnb.nn.Linear8bitLt)
    nf4 = recipe_for(loaded.model)
    assert not pattern_keeps("model.per_layer_model_projection", nf4.skip_modules(method="nf4"))
    assert pattern_keeps("model.per_layer_model_projection", nf4.skip_modules(method="int8"))
