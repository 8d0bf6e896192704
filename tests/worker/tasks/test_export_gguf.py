"""GGUF exports made with llama.cpp's own converters and run by llama.cpp itself for the parity check.

Marked `llamacpp` (and slow): the first test of a machine builds libllama from the llama-cpp-python sdist
into ~/.cache/tuneboard/llamacpp (or $TUNEBOARD_LLAMACPP_DIR), a few minutes on two cores; CI runs it
with the rest of the suite (.ci/run runs plain `pytest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worker.tasks.export_runs import card_of, copy_run, quantized_run, run_export
from worker.export.modelfile import render, validate

# the first GGUF test of a fresh machine also builds libllama (measured 4 min on 2 busy cores)
pytestmark = [pytest.mark.training, pytest.mark.llamacpp, pytest.mark.timeout(900)]
FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype in general.file_type


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    run = quantized_run("tiny-llama")
    run_dir, task_input = copy_run(run, tmp_path_factory.mktemp("gguf-llama"))
    return run, run_dir, task_input


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_the_merged_4bit_run_as_gguf_loads_in_llama_cpp_and_agrees_within_its_tolerance(
    quant: str, llama_run: tuple[Any, Path, Path]
) -> None:
    from transformers import AutoTokenizer

    from worker.export.gguf import read_metadata
    from worker.export.parity import TOLERANCES

    run, run_dir, task_input = llama_run
    proc, status = run_export(run, run_dir, task_input, "gguf", quant)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = f"gguf-{quant}"
    parity = status["parity"]
    tolerance = TOLERANCES[name]
    assert status["state"] == "succeeded" and parity["passed"] and parity["tokenizer_match"] is True
    assert parity["agreement"] >= tolerance.min_agreement
    assert parity["max_logit_diff"] <= tolerance.max_logit_diff
    folder = run_dir / "exports" / name
    gguf = folder / f"model-{quant}.gguf"
    meta = read_metadata(gguf)
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == FILE_TYPES[quant]
    assert {f["name"] for f in status["files"]} == {gguf.name, "Modelfile", "README.md"}
    # the Modelfile is valid and its template is, character for character, the run's chat template
    pairs = dict(validate(folder / "Modelfile"))
    assert pairs["FROM"] == f"./{gguf.name}"
    tok = AutoTokenizer.from_pretrained(str(run.run_dir.adapter))
    want = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert tok.bos_token + render(pairs["TEMPLATE"], "Hi") == want
    card = card_of(run_dir, name)
    assert f"{parity['agreement']:.4f}" in card and str(tolerance.max_logit_diff) in card


def test_the_lora_gguf_applies_to_the_base_gguf_and_agrees_with_the_adapter(
    llama_run: tuple[Any, Path, Path],
) -> None:
    from worker.export.gguf import gguf_logits, read_metadata

    run, run_dir, task_input = llama_run
    proc, status = run_export(run, run_dir, task_input, "gguf-lora", "f16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert status["state"] == "succeeded" and status["parity"]["passed"]
    folder = run_dir / "exports" / "gguf-lora-f16"
    base, lora = folder / "base-f16.gguf", folder / "adapter-f16.gguf"
    assert read_metadata(lora)["adapter.type"] == "lora"
    pairs = dict(validate(folder / "Modelfile"))
    assert pairs["FROM"] == "./base-f16.gguf" and pairs["ADAPTER"] == "./adapter-f16.gguf"
    # llama.cpp really applies it: with the LoRA the logits move away from the base's
    seq = [[1, 20, 30, 40, 50, 60]]
    with_lora = gguf_logits(base, seq, [0], lora_path=lora)[0]
    without = gguf_logits(base, seq, [0])[0]
    assert abs(with_lora - without).max() > 0.5


def test_llama_cpp_refusing_tiny_gemma3n_is_said_in_plain_words_and_nothing_is_published(
    tmp_path: Path,
) -> None:
    run = quantized_run("tiny-gemma3n")
    run_dir, task_input = copy_run(run, tmp_path)
    proc, status = run_export(run, run_dir, task_input, "gguf", "f16")
    assert proc.returncode == 2, proc.stderr[-3000:]  # refused
    assert status["state"] == "failed" and status["stage"] == "refused"
    message = status["message"]
    # convert_hf_to_gguf.py accepts Gemma 3n; llama.cpp's loader refuses the preset's shapes
    assert "llama.cpp converted the model but refuses to load model-f16.gguf" in message
    assert "wrong shape" in message and "does not support this model as it is shaped" in message
    assert not (run_dir / "exports" / "gguf-f16").exists()
    assert not (run_dir / "exports" / "gguf-f16.partial").exists()
