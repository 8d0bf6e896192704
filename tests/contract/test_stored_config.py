"""Stored configs: a job row written by an earlier schema still loads, typed, after fields are added."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from contract.config import (
    CONFIG_VERSION,
    CONFIG_VERSION_KEY,
    ConfigError,
    JobConfig,
    TrainingConfig,
    stored_config,
)

# The `job.config` column of a demo job, exactly as the schema of 2026-12 wrote it (before the speed
# section existed). Copied, not generated: it must keep loading whatever the schema becomes.
ROW_WRITTEN_2026_12 = json.loads(
    """
    {"name": "demo: tiny Gemma 3n learns capitals", "model": {"name": "preset:tiny-gemma3n", "revision":
    null, "attn_implementation": "auto", "dtype": "auto", "trust_remote_code": false}, "dataset":
    {"source": "preset:country-capitals", "format": "auto", "eval_fraction": 0.1, "max_rows": null,
    "assistant_only_loss": true, "num_rows": 256}, "quantization": {"method": "nf4", "double_quant":
    true, "keep_in_full_precision": []}, "lora": {"r": 16, "alpha": 32.0, "dropout": 0.0,
    "target_modules": "auto", "modules_to_save": []}, "training": {"max_steps": 40, "epochs": null,
    "learning_rate": 0.005, "batch_size": 8, "grad_accum": 1, "max_seq_len": 128, "optimizer": "auto",
    "scheduler": "cosine", "warmup": 0.1, "max_grad_norm": 1.0, "weight_decay": 0.0, "seed": 42,
    "logging_steps": 1, "eval_steps": 10, "save_steps": 20, "save_total_limit": 3,
    "gradient_checkpointing": true, "packing": false, "auto_micro_batch": "auto", "torch_compile":
    "auto", "sample_prompts": [], "max_new_tokens": 12}, "guard": {"policy": "rollback",
    "max_rollbacks": 3, "grad_norm_factor": 20.0, "patience": 3, "window": 20}, "resources": {"gpus": 0,
    "priority": 0, "max_runtime_minutes": null}}
    """
)


class TrainingWithANewLever(TrainingConfig):
    """Today's training section plus a field a later version adds."""

    new_lever: bool = Field(False, description="A setting added after the row was written.")


class ConfigWithANewField(JobConfig):
    """Today's schema with one field added to a section and one section added."""

    training: TrainingWithANewLever = Field(default_factory=TrainingWithANewLever)
    notes: str = Field("", description="A top-level field added after the row was written.")


def test_a_row_written_by_an_earlier_schema_loads_with_its_own_values() -> None:
    config = stored_config(ROW_WRITTEN_2026_12)
    assert isinstance(config, JobConfig)
    assert config.training.batch_size == 8 and config.training.learning_rate == 0.005
    assert config.quantization.method == "nf4" and config.lora.r == 16
    assert config.name == "demo: tiny Gemma 3n learns capitals"


def test_a_row_still_loads_after_a_field_is_added_and_the_new_field_gets_its_default() -> None:
    config = stored_config(ROW_WRITTEN_2026_12, schema=ConfigWithANewField)
    assert isinstance(config, ConfigWithANewField)
    assert isinstance(config.training, TrainingWithANewLever)
    assert config.training.new_lever is False and config.notes == ""
    assert config.training.max_steps == 40  # and what the row said is kept


def test_a_row_without_a_version_is_version_one_and_an_explicit_current_version_loads_too() -> None:
    assert CONFIG_VERSION == 1
    versioned = {**ROW_WRITTEN_2026_12, CONFIG_VERSION_KEY: CONFIG_VERSION}
    assert stored_config(versioned) == stored_config(ROW_WRITTEN_2026_12)


def test_a_row_written_by_a_newer_app_is_refused_naming_its_version() -> None:
    with pytest.raises(ConfigError) as err:
        stored_config({**ROW_WRITTEN_2026_12, CONFIG_VERSION_KEY: CONFIG_VERSION + 1})
    assert f"version {CONFIG_VERSION + 1}" in err.value.problems[CONFIG_VERSION_KEY]


def test_a_row_that_no_longer_validates_names_the_field() -> None:
    broken = json.loads(json.dumps(ROW_WRITTEN_2026_12))
    broken["training"]["batch_size"] = 0
    with pytest.raises(ConfigError) as err:
        stored_config(broken)
    assert "training.batch_size" in err.value.problems
    with pytest.raises(ConfigError):
        stored_config(None)


def test_reading_a_row_leaves_the_row_untouched() -> None:
    row = {**ROW_WRITTEN_2026_12, CONFIG_VERSION_KEY: 1}
    stored_config(row)
    assert row[CONFIG_VERSION_KEY] == 1
