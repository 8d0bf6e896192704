"""Config habits from elsewhere: `model: <id>` / `dataset: <path>` shorthand and "did you mean" hints."""

from __future__ import annotations

import pytest

from contract.config import ConfigError, load_config_text, parse_config, stored_config


def problems_of(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_model_and_dataset_as_plain_strings_become_their_sections() -> None:
    config = load_config_text("model: google/gemma-3n-E2B-it\ndataset: data/train.jsonl\n")
    assert config.model.name == "google/gemma-3n-E2B-it"
    assert config.dataset.source == "data/train.jsonl"
    assert config.dataset.format == "auto"  # the rest of the section keeps its defaults


def test_a_shorthand_string_is_still_validated_as_that_field() -> None:
    problems = problems_of({"model": "preset:no-such-preset", "dataset": ""})
    assert "unknown preset" in problems["model.name"]
    assert "dataset.source" in problems


def test_shorthand_also_reads_back_from_a_stored_row() -> None:
    assert stored_config({"model": "preset:tiny-llama"}).model.name == "preset:tiny-llama"


@pytest.mark.parametrize(
    ("key", "field", "origin"),
    [
        ("learning_rate", "training.learning_rate", "TrainingArguments"),
        ("gradient_accumulation_steps", "training.grad_accum", "TrainingArguments"),
        ("warmup_ratio", "training.warmup", "TrainingArguments"),
        ("num_train_epochs", "training.epochs", "TrainingArguments"),
        ("per_device_train_batch_size", "training.batch_size", "TrainingArguments"),
        ("lora_r", "lora.r", "Axolotl"),
        ("lora_rank", "lora.r", "LLaMA-Factory"),
        ("base_model", "model.name", "Axolotl"),
        ("model_name_or_path", "model.name", "LLaMA-Factory"),
        ("cutoff_len", "training.max_seq_len", "LLaMA-Factory"),
        ("sequence_len", "training.max_seq_len", "Axolotl"),
        ("micro_batch_size", "training.batch_size", "Axolotl"),
        ("quantization_bit", "quantization.method", "LLaMA-Factory"),
    ],
)
def test_foreign_names_at_the_top_level_say_which_field_they_mean(key: str, field: str, origin: str) -> None:
    message = problems_of({key: 1})[key]
    assert message.startswith(f"unknown key; did you mean {field}?"), message
    assert origin in message


def test_import_config_is_suggested_for_whole_files_from_other_tools() -> None:
    assert (
        "tuneboard import-config" in problems_of({"lora_target_modules": ["q_proj"]})["lora_target_modules"]
    )
    assert "import-config" not in problems_of({"learning_rate": 1e-4})["learning_rate"]


def test_our_own_field_in_the_wrong_section_names_the_right_one() -> None:
    problems = problems_of({"max_steps": 5, "training": {"r": 4}})
    assert "did you mean training.max_steps?" in problems["max_steps"]
    assert "did you mean lora.r?" in problems["training.r"]


def test_a_near_miss_is_suggested_and_nonsense_is_not() -> None:
    problems = problems_of({"training": {"learning_rat": 0.1}, "zzzq": 1})
    assert "did you mean training.learning_rate?" in problems["training.learning_rat"]
    assert problems["zzzq"] == "unknown key; check the spelling (see the config reference for allowed keys)"
