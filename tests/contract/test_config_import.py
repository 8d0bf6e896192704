"""Importing LLaMA-Factory and Axolotl training YAMLs (fixtures written here, in those tools' formats)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.config import ConfigError, load_config_text
from contract.config_import import AXOLOTL, LLAMA_FACTORY, import_config, import_config_text, looks_foreign

FIXTURES = Path(__file__).parent / "foreign_configs"


def load(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_an_axolotl_gemma3n_qlora_config_converts_key_by_key() -> None:
    text = load("axolotl-gemma3n-qlora.yaml")
    with pytest.raises(ConfigError) as caught:  # as it is, our schema refuses it, naming every key
        load_config_text(text)
    assert len(caught.value.problems) > 30
    result = import_config_text(text)
    cfg = result.config
    assert result.tool == AXOLOTL
    assert cfg.model.name == "google/gemma-3n-E2B-it"
    assert cfg.quantization.method == "nf4"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16.0, 0.05)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.dataset.source == "data/support-chats.jsonl" and cfg.dataset.format == "messages"
    assert cfg.dataset.eval_fraction == 0.05 and cfg.dataset.assistant_only_loss is True
    assert (cfg.training.max_seq_len, cfg.training.batch_size, cfg.training.grad_accum) == (1024, 2, 4)
    assert cfg.training.epochs == 1.0 and cfg.training.max_steps is None
    assert (cfg.training.learning_rate, cfg.training.warmup) == (2e-4, 0.1)
    assert cfg.training.optimizer == "adamw_8bit" and cfg.training.scheduler == "cosine"
    assert cfg.training.packing is True
    unmapped = dict(result.unmapped)
    assert set(unmapped) == {
        "output_dir",
        "evals_per_epoch",
        "saves_per_epoch",
        "wandb_project",
        "special_tokens",
    }
    assert "run directory" in unmapped["output_dir"]
    assert "training.eval_steps" in unmapped["evals_per_epoch"]
    # every key of the file is accounted for, once
    accounted = [k for k, _ in result.mapped + result.implied + result.unmapped]
    assert sorted(accounted) == sorted(yaml.safe_load(text))


def test_a_llama_factory_lora_sft_config_converts_and_names_what_it_cannot() -> None:
    result = import_config_text(load("llama-factory-lora-sft.yaml"))
    cfg = result.config
    assert result.tool == LLAMA_FACTORY
    assert cfg.model.name == "meta-llama/Llama-3.2-1B-Instruct" and cfg.model.trust_remote_code
    assert cfg.model.dtype == "bfloat16"
    assert cfg.quantization.method == "nf4" and cfg.quantization.double_quant
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32.0, "auto")
    assert (cfg.training.max_seq_len, cfg.training.batch_size, cfg.training.grad_accum) == (2048, 1, 8)
    assert cfg.training.epochs == 3.0 and cfg.training.learning_rate == 1e-4
    assert cfg.dataset.max_rows == 1000 and cfg.dataset.eval_fraction == 0.1
    unmapped = dict(result.unmapped)
    assert "dataset_info.json" in unmapped["dataset"]  # a dataset name, not a file
    assert {"output_dir", "ddp_timeout", "eval_strategy", "per_device_eval_batch_size"} <= set(unmapped)
    assert dict(result.implied)["stage"] == "Tuneboard does supervised fine-tuning"


def test_the_converted_yaml_loads_as_the_same_config() -> None:
    result = import_config_text(load("axolotl-gemma3n-qlora.yaml"))
    text = result.yaml_text()
    assert text.startswith("# converted from an Axolotl config")
    assert "#   wandb_project:" in text
    assert load_config_text(text) == result.config
    assert not looks_foreign(text) and looks_foreign(load("llama-factory-lora-sft.yaml"))


def test_a_value_our_schema_refuses_moves_to_the_unmapped_list_and_the_rest_converts() -> None:
    result = import_config(
        {"base_model": "preset:tiny-llama", "adapter": "qlora", "learning_rate": 5, "lora_r": 8},
    )
    assert result.config.lora.r == 8 and result.config.training.learning_rate == 2e-4
    why = dict(result.unmapped)["learning_rate"]
    assert "training.learning_rate" in why and "at most 1" in why


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"model_name_or_path": "m", "stage": "dpo", "finetuning_type": "lora"}, "stage", "supervised"),
        ({"model_name_or_path": "m", "finetuning_type": "full", "stage": "sft"}, "finetuning_type", "LoRA"),
        ({"base_model": "m", "adapter": "ia3"}, "adapter", "LoRA and QLoRA"),
        ({"base_model": "m", "adapter": "lora", "datasets": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]},
         "datasets", "one file"),
        ({"base_model": "m", "adapter": "lora", "val_set_size": 200}, "val_set_size", "fraction"),
        ({"model_name_or_path": "m", "stage": "sft", "quantization_bit": 2}, "quantization_bit", "4 or 8"),
    ],
)  # fmt: skip
def test_unsupported_values_are_listed_with_why(data: dict[str, object], key: str, fragment: str) -> None:
    unmapped = dict(import_config(data).unmapped)
    assert fragment in unmapped[key], unmapped


def test_a_tuneboard_config_or_garbage_is_not_mistaken_for_another_tool() -> None:
    for text in ("model: preset:tiny-llama\ntraining: {max_steps: 3}\n", "- a\n- b\n", "just words"):
        with pytest.raises(ConfigError):
            import_config_text(text)
    assert not looks_foreign("model: {name: x}\nlearning_rate: 1\n")
