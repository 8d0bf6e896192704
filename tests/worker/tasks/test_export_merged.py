"""Merged exports of 4-bit runs (worker/export): folded into the dequantized base, loaded by plain
transformers, and checked against the adapter on its 4-bit base before they are published."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.worker.takeaway_run import preset_cache_dir
from tests.worker.tasks.export_runs import card_of, copy_run, quantized_run, run_export

pytestmark = pytest.mark.training
_EXPORTED: dict[str, tuple[Path, Path, dict[str, Any]]] = {}


def merged_export(preset: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(run dir, task input, status) of the merged export of the preset's nf4 run, made once per session."""
    if preset not in _EXPORTED:
        run = quantized_run(preset)
        run_dir, task_input = copy_run(run, tmp_path_factory.mktemp(f"merged-{preset}"))
        proc, status = run_export(run, run_dir, task_input, "merged", "model")
        assert proc.returncode == 0, proc.stderr[-3000:]
        _EXPORTED[preset] = (run_dir, task_input, status)
    return _EXPORTED[preset]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma3n"])
def test_a_4bit_run_merges_into_its_dequantized_base_and_agrees_with_the_adapter(
    preset: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_dir, _, status = merged_export(preset, tmp_path_factory)
    assert status["state"] == "succeeded" and status["base"] == "dequantized"
    assert "the weights it was trained against" in status["base_words"]
    parity = status["parity"]
    assert parity["passed"] and parity["agreement"] >= 0.99 and parity["max_logit_diff"] <= 0.05
    assert parity["positions"] > 40 and parity["prompts"] == 4
    folder = run_dir / "exports" / "merged"
    # every file listed with its real size and sha256
    for f in status["files"]:
        data = (folder / f["name"]).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: no bitsandbytes, no PEFT needed
    assert not (folder / "adapter_config.json").exists()
    card = card_of(run_dir, "merged")
    assert f"{parity['agreement']:.4f}" in card and "dequantized nf4 base" in card
    assert not (run_dir / "exports" / "merged.partial").exists()


def test_the_merged_folder_loads_in_transformers_and_answers_like_the_adapter_on_its_4bit_base(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from worker.tasks.inference import adapter_info, attach_adapter, load_base

    run = quantized_run("tiny-llama")
    run_dir, task_input, _ = merged_export("tiny-llama", tmp_path_factory)
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    info = adapter_info(run_dir, task_input)
    trained = attach_adapter(load_base(info, device="cpu", quantized=True), info)  # as it was trained
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "exports" / "merged")).eval()
    plain = load_base(info, device="cpu", quantized=False)  # the full-precision base, adapter left out
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
    with torch.no_grad():
        want, got, without = (m(input_ids=ids).logits for m in (trained, merged, plain))
    assert torch.allclose(want, got, atol=1e-3)
    assert (want - without).abs().max() > 0.5  # the adapter matters: a merge that dropped it would fail


def test_the_full_precision_base_is_used_when_asked_and_the_card_says_what_that_means(
    tmp_path: Path,
) -> None:
    run = quantized_run("tiny-llama")
    run_dir, task_input = copy_run(run, tmp_path)
    proc, status = run_export(run, run_dir, task_input, "merged", "model", base="full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert status["base"] == "full" and "quantization error" in status["base_words"]
    assert status["parity"]["passed"]
    assert "full-precision base checkpoint" in card_of(run_dir, "merged")


def test_an_export_outside_its_tolerance_is_failed_with_its_numbers_and_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.export import parity
    from worker.export.run import EXIT_PARITY
    from worker.export.run import run_export as export_in_process

    run = quantized_run("tiny-llama")
    run_dir, task_input = copy_run(run, tmp_path)
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    # a bound no real export can meet (logits never match to 1e-12 after a save in float32 + a merge)
    strict = parity.Tolerance(1.0, 1e-12, "a test's impossible bound")
    monkeypatch.setitem(parity.TOLERANCES, "merged", strict)
    assert export_in_process(run_dir, task_input, "merged", "model") == EXIT_PARITY
    status = json.loads((run_dir / "exports" / "merged.json").read_text())
    assert status["state"] == "failed" and status["files"] == []
    assert "parity FAILED" in status["message"] and "largest logit difference" in status["message"]
    assert status["parity"]["passed"] is False and status["parity"]["max_logit_diff"] > 1e-12
    assert not (run_dir / "exports" / "merged").exists()  # never offered as good
    assert (run_dir / "exports" / "merged.rejected" / "README.md").is_file()  # kept to look at


def test_the_parity_check_catches_a_model_without_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.export import parity
    from worker.export.merge import merge_adapter
    from worker.tasks.inference import adapter_info, load_base, load_tokenizer

    run = quantized_run("tiny-llama")
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    info = adapter_info(run.run_dir.root, run.run_dir.config)
    merged = merge_adapter(info, base="dequantized", device="cpu")
    reference = parity.reference_from(merged.reference, load_tokenizer(info))
    good = parity.check(reference, "merged", lambda s, st: parity.hf_logits(merged.model, s, st))
    base = load_base(info, device="cpu", quantized=True)
    bad = parity.check(reference, "gguf-q4_k_m", lambda s, st: parity.hf_logits(base, s, st))
    assert good["passed"] and not bad["passed"]  # even the loosest tolerance sees the adapter missing
    assert bad["max_logit_diff"] > parity.TOLERANCES["gguf-q4_k_m"].max_logit_diff
