"""The seed's failures, reproduced with plain transformers + peft, and what Tuneboard does instead.

1. Skip list ["altup", "lm_head"]: the AltUp Linears are still quantized, and the first training
   step fails with "result type Float can't be cast to the desired output type" (the in-place clamp).
2. modules_to_save=["altup"] on a quantized AltUp: get_peft_model fails with "only Tensors of floating
   point dtype can require gradients".
3. prepare_model_for_kbit_training upcasts every frozen non-quantized table to fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.loading import (
    load_for_training,
    load_model_config,
    load_source_for_training,
    resolve_model_source,
)

NAIVE_SKIP = ["altup", "lm_head"]  # the seed's wording


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _plain_load(skip: list[str], dtype: Any = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from worker.presets import preset_model_dir

    dtype = dtype or torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=skip,
    )
    return AutoModelForCausalLM.from_pretrained(
        Path(preset_model_dir("tiny-gemma3n")), quantization_config=quant, dtype=dtype, device_map={"": "cpu"}
    )


def _ids() -> Any:
    import torch

    return torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))


def _one_step(model: Any) -> float:
    model.train()
    ids = _ids()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss.item())


def test_the_seed_skip_list_crashes_the_first_training_step_in_plain_transformers() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_plain_load(NAIVE_SKIP), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    ids = _ids()
    with pytest.raises(RuntimeError, match="result type Float can't be cast to the desired output type"):
        model(input_ids=ids, labels=ids)


def test_tuneboard_keeps_altup_unquantized_so_the_same_step_trains() -> None:
    loaded = load_for_training(demo_config(), device="cpu")
    assert _one_step(loaded.model) > 0


def test_tuneboard_preflight_repairs_the_seed_skip_list_and_says_why() -> None:
    from worker.train.preflight import run_preflight

    result = run_preflight(demo_config(), keep_override=NAIVE_SKIP)
    assert result.ok
    assert any("AltUp" in n and "can't be cast" in n for n in result.notes)
    # the discovered patterns make the naive list work on the real preset too
    cfg = demo_config()
    source = resolve_model_source(cfg.model.name)
    loaded = load_source_for_training(
        cfg,
        source,
        load_model_config(source),
        device="cpu",
        keep_override=NAIVE_SKIP,
        extra_keep=result.extra_keep,
    )
    assert _one_step(loaded.model) > 0


def test_modules_to_save_on_a_quantized_altup_fails_inside_get_peft_model_in_plain_peft() -> None:
    from peft import LoraConfig, get_peft_model

    model = _plain_load(["lm_head"])
    lora = LoraConfig(r=8, target_modules=["q_proj"], modules_to_save=["altup"])
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype can require gradients"):
        get_peft_model(model, lora)


def test_tuneboard_keeps_a_modules_to_save_target_unquantized_and_notes_it() -> None:
    cfg = demo_config()
    cfg.lora.modules_to_save = ["altup"]
    source = resolve_model_source(cfg.model.name)
    # even with the naive list, the module PEFT trains in full is kept out of 4-bit automatically
    loaded = load_source_for_training(
        cfg, source, load_model_config(source), device="cpu", keep_override=NAIVE_SKIP
    )
    assert any("'altup'" in n and "un-quantized" in n for n in loaded.notes)
    assert _one_step(loaded.model) > 0


def test_the_seed_upcast_doubles_frozen_tables_and_tuneboard_does_not() -> None:
    import torch
    from peft import prepare_model_for_kbit_training

    seed = prepare_model_for_kbit_training(_plain_load(["lm_head", r".*\.altup"], dtype=torch.bfloat16))
    table = seed.model.embed_tokens_per_layer
    assert table.weight.dtype == torch.float32  # the seed's recipe: 2 B parameters doubled on E2B

    cfg = demo_config()
    cfg.model.dtype = "bfloat16"
    loaded = load_for_training(cfg, device="cpu")
    ours = loaded.model.get_base_model().model.embed_tokens_per_layer
    assert ours.weight.dtype == torch.bfloat16
    assert _one_step(loaded.model) > 0
