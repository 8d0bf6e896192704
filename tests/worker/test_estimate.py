"""The torch-free memory estimate shown on the new-job form."""

from __future__ import annotations

from typing import Any

from worker.config import JobConfig, demo_config
from worker.estimate import estimate_memory


def config(**sections: Any) -> JobConfig:
    return JobConfig.model_validate(sections)


E2B_GPU = {"model": {"name": "google/gemma-3n-E2B-it"}, "resources": {"gpus": 1}}


def test_gemma3n_e2b_at_batch_4_by_512_lands_near_the_measured_peak() -> None:
    # qlora-facts.md: nf4 without the fp32 upcast, bs 4 x 512, checkpointing: 14.0 GB peak on an H100
    est = estimate_memory(config(**E2B_GPU, training={"batch_size": 4, "max_seq_len": 512}))
    assert est.total_gb is not None
    assert 9.0 < est.total_gb < 20.0
    assert est.device == "GPU"
    assert abs(sum(est.breakdown.values()) - est.total_gb) < 1e-9


def test_bigger_batches_longer_rows_and_no_checkpointing_cost_more() -> None:
    base = estimate_memory(config(**E2B_GPU)).total_gb
    assert base is not None
    assert estimate_memory(config(**E2B_GPU, training={"batch_size": 16})).total_gb > base  # type: ignore[operator]
    assert estimate_memory(config(**E2B_GPU, training={"max_seq_len": 2048})).total_gb > base  # type: ignore[operator]
    no_ckpt = estimate_memory(config(**E2B_GPU, training={"gradient_checkpointing": False}))
    assert no_ckpt.total_gb > base  # type: ignore[operator]
    assert any("checkpointing is off" in n for n in no_ckpt.notes)


def test_four_bit_weights_take_less_than_eight_bit_and_unquantized() -> None:
    totals = {
        method: estimate_memory(config(**E2B_GPU, quantization={"method": method})).total_gb
        for method in ("nf4", "int8", "none")
    }
    assert totals["nf4"] < totals["int8"] < totals["none"]  # type: ignore[operator]


def test_plain_adamw_states_cost_more_than_8bit_adam() -> None:
    eight = estimate_memory(config(**E2B_GPU, training={"optimizer": "paged_adamw_8bit"}))
    plain = estimate_memory(config(**E2B_GPU, training={"optimizer": "adamw_torch"}))
    assert plain.total_gb > eight.total_gb  # type: ignore[operator]


def test_cpu_demo_is_host_memory_of_about_half_a_gigabyte() -> None:
    est = estimate_memory(demo_config())
    assert est.device == "CPU"
    assert est.total_gb is not None and 0.4 < est.total_gb < 1.0  # measured ~0.55 GB RSS
    assert any("host memory" in n for n in est.notes)


def test_unknown_model_says_unknown_size_instead_of_guessing() -> None:
    est = estimate_memory(config(model={"name": "someone/mystery-7b"}))
    assert est.total_gb is None
    assert not est.model_known
    assert est.breakdown == {}
    assert "unknown size" in est.notes[0]
    assert est.as_dict()["total_gb"] is None


def test_unrecognised_target_module_names_are_sized_and_noted() -> None:
    est = estimate_memory(config(**E2B_GPU, lora={"target_modules": ["q_proj", "mystery_proj"]}))
    assert any("mystery_proj" in n for n in est.notes)
