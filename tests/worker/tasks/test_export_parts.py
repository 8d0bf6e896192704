"""The small parts of exports, without models: names, the Modelfile parser, the converter shim's tokenizer
check, tolerances, and the Hub push's handling of its token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.tasks import (
    ExportRequestError,
    all_export_names,
    export_name,
    export_name_of,
    parse_export_name,
)
from worker.export.convert_shim import declared_gpt2_pretokenizer
from worker.export.hub import PushError, push_folder, scrub
from worker.export.modelfile import ModelfileError, parse, render, validate
from worker.export.parity import TOLERANCES, Tolerance, compare


def test_export_names_round_trip_and_unknown_ones_are_refused_with_the_choices() -> None:
    assert export_name("gguf", None) == "gguf-q4_k_m" and export_name("merged") == "merged"
    for name in all_export_names():
        assert export_name(*parse_export_name(name)) == name
    with pytest.raises(ExportRequestError, match="q4_k_m"):
        export_name("gguf", "q2_k")
    with pytest.raises(ExportRequestError, match="merged, gguf, gguf-lora"):
        export_name("onnx")
    args = ["--config", "c.json", "--format", "gguf", "--quant", "q8_0", "--base", "auto"]
    assert export_name_of(args) == "gguf-q8_0" and export_name_of(["--format"]) is None


def test_every_export_has_a_stated_tolerance_and_quantized_gguf_gets_a_looser_one() -> None:
    for name in all_export_names():
        assert name in TOLERANCES and TOLERANCES[name].why
    assert TOLERANCES["gguf-q4_k_m"].max_logit_diff > TOLERANCES["gguf-q8_0"].max_logit_diff
    assert TOLERANCES["gguf-q8_0"].max_logit_diff > TOLERANCES["gguf-f16"].max_logit_diff
    assert TOLERANCES["gguf-q4_k_m"].min_agreement < TOLERANCES["merged"].min_agreement


def test_compare_counts_greedy_agreement_and_the_largest_logit_difference() -> None:
    import numpy as np

    from worker.export.parity import Reference

    ref = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    reference = Reference(sequences=[[1, 2, 3]], starts=[1], logits=[ref])
    flipped = ref.copy()
    flipped[1] = [0.0, 3.5, 0.0]  # second position's argmax moves
    result = compare(reference, [flipped], Tolerance(0.9, 10.0, "test"))
    assert result["agreement"] == 0.5 and result["max_logit_diff"] == 3.5 and not result["passed"]
    same = compare(reference, [ref + 0.01], Tolerance(0.9, 0.05, "test"))
    assert same["passed"] and same["agreement"] == 1.0


def test_a_valid_modelfile_parses_and_renders_one_turn(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    text = (
        'FROM ./model.gguf\nTEMPLATE """<u>\n{{ .Prompt }}</u>\n{{ .Response }}"""\nPARAMETER stop "</u>"\n'
    )
    (tmp_path / "Modelfile").write_text(text)
    pairs = validate(tmp_path / "Modelfile")
    assert pairs[0] == ("FROM", "./model.gguf") and pairs[2] == ("PARAMETER", 'stop "</u>"')
    assert render(pairs[1][1], "hi") == "<u>\nhi</u>\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('TEMPLATE """{{ .Prompt }}"""\n', "exactly one FROM"),
        ("FROM ./missing.gguf\n", "not next to the Modelfile"),
        ("FROM ./model.gguf\nPARAMETER bogus 1\n", "unknown parameter"),
        ("FROM ./model.gguf\nFROBNICATE x\n", "unknown instruction"),
        ('FROM ./model.gguf\nTEMPLATE """never closed\n', "never closed"),
        ('FROM ./model.gguf\nTEMPLATE """no prompt"""\n', "never places"),
    ],
)
def test_a_modelfile_ollama_would_reject_is_refused_with_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "Modelfile").write_text(text)
    with pytest.raises(ModelfileError, match=problem):
        validate(tmp_path / "Modelfile")
    assert parse("# a comment\n\n") == []


def test_the_shim_answers_gpt2_only_for_a_tokenizer_that_declares_gpt2s_pretokenizer(tmp_path: Path) -> None:
    def tokenizer(**changes: object) -> Path:
        body: dict[str, object] = {
            "model": {"type": "BPE", "vocab": {}, "merges": []},
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        }
        body.update(changes)
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps(body))
        return folder

    assert declared_gpt2_pretokenizer(tokenizer())
    assert not declared_gpt2_pretokenizer(tokenizer(normalizer={"type": "NFC"}))
    assert not declared_gpt2_pretokenizer(tokenizer(pre_tokenizer={"type": "Metaspace"}))
    assert not declared_gpt2_pretokenizer(tokenizer(model={"type": "Unigram"}))
    assert not declared_gpt2_pretokenizer(tmp_path / "nothing-here")


def test_a_push_refuses_bad_input_and_never_repeats_the_token(tmp_path: Path) -> None:
    token = "hf_abcdefghijklmnop"
    assert token not in scrub(f"401 for {token} and hf_otherlooking12345", token)
    with pytest.raises(PushError, match="OWNER/NAME"):
        push_folder(tmp_path, "not a repo", token)
    with pytest.raises(PushError, match="HF_TOKEN"):
        push_folder(tmp_path, "me/x", "")
    with pytest.raises(PushError, match="no files"):
        push_folder(tmp_path, "me/x", token)
