"""The torch-free memory estimate shown on the new-job form."""

from __future__ import annotations

from typing import Any

from contract.config import JobConfig, demo_config
from contract.estimate import estimate_memory


def config(**sections: Any) -> JobConfig:
    return JobConfig.model_validate(sections)


E2B_GPU = {"model": {"name": "google/gemma-3n-E2B-it"}, "resources": {"gpus": 1}}


def test_gemma3n_e2b_at_batch_4_by_512_lands_near_the_measured_peak() -> None:
    # bench/README.md, the worker's GPU defaults (per-layer table on the host, fused loss, offloaded layer
    # inputs) on E2B text dims: 4.02 GB peak allocated / 4.12 GB reserved at 4 x 512 and 9.21 / 10.21 GB at
    # 16 x 512 on an H100. The hub model adds its towers (~1 B parameters), so allow up to +40%.
    est = estimate_memory(config(**E2B_GPU, training={"batch_size": 4, "max_seq_len": 512}))
    assert est.total_gb is not None
    assert 3.8 < est.total_gb < 6.0
    assert est.device == "GPU"
    assert abs(sum(est.breakdown.values()) - est.total_gb) < 1e-9
    at16 = estimate_memory(config(**E2B_GPU, training={"batch_size": 16, "max_seq_len": 512})).total_gb
    assert at16 is not None and 8.5 < at16 < 13.0
    assert not any("logits" in key for key in est.breakdown)
    assert any("per-layer embedding table" in n for n in est.notes)
    assert any("liger-kernel" in n for n in est.notes)


def test_the_host_kept_table_and_the_fused_loss_apply_only_to_gpu_runs() -> None:
    cpu = estimate_memory(config(model={"name": "google/gemma-3n-E2B-it"}, resources={"gpus": 0}))
    assert "logits (fp32, forward + gradient)" in cpu.breakdown
    assert not any("per-layer embedding table" in n for n in cpu.notes)
    weights = next(v for k, v in cpu.breakdown.items() if k.startswith("base weights"))
    gpu = estimate_memory(config(**E2B_GPU))
    gpu_weights = next(v for k, v in gpu.breakdown.items() if k.startswith("base weights"))
    # the CPU run keeps fp32 for the un-packed share and the whole table; the GPU run neither
    assert gpu_weights < weights / 3


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
