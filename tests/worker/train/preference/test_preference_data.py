"""Preference rows through the chat template, collated, checked by line, refused for the wrong method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.config import JobConfig, parse_config
from contract.datasets import DatasetError, DatasetInvalid
from worker.presets import gemma_tokenizer
from worker.train.preference.data import (
    PreferenceCollator,
    Renderer,
    add_kl_answers,
    fit,
    pair_example,
    prepare_preference_data,
    unroll_pairs,
)
from worker.train.preference.setup import check_data

ROW = {"prompt": "Shout the word: abc", "chosen": "ABC", "rejected": "abc"}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return gemma_tokenizer()


def _cfg(source: str, method: str, **dataset: Any) -> JobConfig:
    return parse_config(
        {"method": method, "dataset": {"source": source, **dataset}, "training": {"max_seq_len": 64}}
    )


def _jsonl(tmp_path: Path, rows: list[Any]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_answers_are_the_tokens_the_template_puts_after_the_prompt(tokenizer: Any) -> None:
    example, cut = pair_example(Renderer(tokenizer), ROW, 64)
    assert example is not None and not cut
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": ROW["prompt"]}, {"role": "assistant", "content": "ABC"}],
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert example["prompt_ids"] + example["chosen_ids"] == list(full)
    assert tokenizer.decode(example["chosen_ids"]).startswith("ABC")
    assert tokenizer.decode(example["rejected_ids"]).startswith("abc")
    assert tokenizer.decode(example["prompt_ids"]).endswith("model\n")  # the generation prompt


def test_truncation_keeps_the_prompts_end_and_half_the_length_for_the_answer() -> None:
    prompt, answer, cut = fit(list(range(30)), list(range(100, 130)), 40)
    assert cut and len(prompt) + len(answer) == 40
    assert prompt[-1] == 29 and answer[0] == 100 and len(answer) == 20


def test_the_collator_puts_chosen_then_rejected_rows_and_labels_only_answers(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer)
    pairs = [
        pair_example(renderer, {**ROW, "chosen": w.upper(), "rejected": w}, 64)[0] for w in ("ab", "xyz")
    ]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    assert batch["input_ids"].shape[0] == 4
    labels = batch["labels"]
    for row, example, key in zip(
        labels, pairs + pairs, ["chosen_ids"] * 2 + ["rejected_ids"] * 2, strict=True
    ):
        kept = [int(t) for t in row if t != -100]
        assert kept == example[key]
    assert batch["tuneboard_tokens"] == int(batch["attention_mask"].sum())


def test_kto_reads_pairs_as_good_and_bad_answers_with_mismatched_kl_answers(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer)
    pairs = [
        pair_example(renderer, {**ROW, "chosen": w.upper(), "rejected": w}, 64)[0] for w in ("ab", "xyz", "q")
    ]
    unrolled = unroll_pairs(pairs)
    assert [e["label"] for e in unrolled] == [True, False] * 3
    add_kl_answers(unrolled, "completion_ids", shift=2)
    # each prompt is paired with another prompt's answer
    assert unrolled[0]["kl_ids"] == pairs[1]["chosen_ids"]
    batch = PreferenceCollator(tokenizer.pad_token_id)(unrolled[:2])
    assert batch["desirable"].tolist() == [True, False]
    assert batch["kl_input_ids"].shape[0] == 2


def test_bad_rows_are_refused_by_line_all_at_once(tmp_path: Path) -> None:
    rows = [ROW, {"prompt": "x", "chosen": "Same", "rejected": "Same"}, ROW, {"prompt": "y", "chosen": "A"}]
    with pytest.raises(DatasetInvalid) as caught:
        check_data(_cfg(_jsonl(tmp_path, rows), "dpo"))
    message = str(caught.value)
    assert "2 bad row(s)" in message and "line 2" in message and "line 4" in message
    assert "same answer" in message


def test_sft_data_with_dpo_is_refused_naming_sft(tmp_path: Path) -> None:
    source = _jsonl(tmp_path, [{"prompt": "a", "completion": "b"}] * 3)
    with pytest.raises(DatasetError, match="method: sft"):
        check_data(_cfg(source, "dpo"))


def test_a_preference_file_with_sft_is_refused_naming_the_preference_methods(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="method: dpo"):
        check_data(_cfg(_jsonl(tmp_path, [ROW] * 3), "sft"))
    with pytest.raises(DatasetError, match="method: dpo"):
        check_data(_cfg("preset:uppercase-preference", "sft"))


def test_labelled_data_with_dpo_is_refused_naming_kto(tmp_path: Path) -> None:
    source = _jsonl(tmp_path, [{"prompt": "a", "completion": "b", "label": True}] * 3)
    with pytest.raises(DatasetError, match="method: kto"):
        check_data(_cfg(source, "dpo"))


def test_the_preset_prepares_held_out_pairs_for_every_method(tokenizer: Any) -> None:
    for method in ("dpo", "orpo", "kto"):
        data = prepare_preference_data(
            _cfg("preset:uppercase-preference", method, num_rows=40, eval_fraction=0.25), tokenizer
        )
        assert len(data.eval) == 10 and all("chosen_ids" in e for e in data.eval)
        assert len(data.train) == (60 if method == "kto" else 30)


def test_the_preview_shows_both_sides_their_tokens_and_what_is_cut(tokenizer: Any) -> None:
    from worker.train.preference.data import preview_rows

    long = {"prompt": "Shout the word: " + "x" * 40, "chosen": "Y" * 30, "rejected": "y" * 30}
    shown = preview_rows([ROW, long], tokenizer, max_seq_len=64)
    first, second = shown["rows"]
    assert shown["layout"] == "paired"
    assert (first["chosen"], first["rejected"]) == ("ABC", "abc")
    assert first["chosen_tokens"] == first["rejected_tokens"] and "chosen_cut" not in first
    assert second["chosen_cut"]["prompt_tokens_dropped"] > 0
