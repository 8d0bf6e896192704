"""Datasets load from presets, files and uploads; bad rows are named by number; labels cover answers only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.config import JobConfig, demo_config
from worker.train.data import (
    IGNORE_INDEX,
    DatasetError,
    PadCollator,
    detect_format,
    fingerprint_rows,
    load_rows,
    prepare_data,
    split_rows,
    tokenize_row,
    validate_rows,
)

CHAT = {
    "messages": [
        {"role": "user", "content": "Reverse the letters: abc"},
        {"role": "assistant", "content": "cba"},
    ]
}


@pytest.fixture(scope="module")
def preset_cache() -> Iterator[Path]:
    from tests.worker.training_runs import PRESET_CACHE

    with pytest.MonkeyPatch.context() as mp:  # the training children reuse the presets built here
        mp.setenv("TUNEBOARD_CACHE_DIR", str(PRESET_CACHE))
        yield PRESET_CACHE


@pytest.fixture(scope="module", params=["tiny-gemma3n", "tiny-llama"])
def tokenizer(request: pytest.FixtureRequest, preset_cache: Path) -> Any:
    from transformers import AutoTokenizer

    from worker.presets import preset_model_dir

    return AutoTokenizer.from_pretrained(preset_model_dir(request.param))


def _cfg(source: str, **dataset: Any) -> JobConfig:
    cfg = demo_config()
    cfg.dataset.source = source
    for key, value in dataset.items():
        setattr(cfg.dataset, key, value)
    return cfg


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_formats_are_detected_from_the_columns() -> None:
    assert detect_format(CHAT) == "messages"
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert detect_format({"text": "hello"}) == "text"
    with pytest.raises(DatasetError, match="expected 'messages'"):
        detect_format({"question": "a", "answer": "b"})


def test_bad_rows_are_reported_with_their_row_numbers() -> None:
    rows = [
        CHAT,
        {"messages": [{"role": "user", "content": "hi"}]},
        CHAT,
        {"messages": [{"role": "bot", "content": "x"}]},
    ]
    with pytest.raises(DatasetError) as err:
        validate_rows(rows, "messages")
    text = str(err.value)
    assert (
        "2 bad row(s)" in text
        and "row 2: no assistant message" in text
        and "row 4: message 1 has role 'bot'" in text
    )


def test_a_broken_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(CHAT) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="data.jsonl line 2: not valid JSON"):
        load_rows(_cfg(str(path)))


def test_jsonl_csv_parquet_and_uploads_load_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.csv").write_text(
        "prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(5)), encoding="utf-8"
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "up" / "abc123").mkdir(parents=True)
    _jsonl(tmp_path / "up" / "abc123" / "data.jsonl", rows)
    monkeypatch.setenv("TUNEBOARD_DATASETS_DIR", str(tmp_path / "up"))
    for source in ("d.jsonl", "d.csv", "d.parquet"):
        assert load_rows(_cfg(str(tmp_path / source))) == rows, source
    assert load_rows(_cfg("upload:abc123")) == rows
    with pytest.raises(DatasetError, match="not found"):
        load_rows(_cfg("upload:missing"))
    with pytest.raises(DatasetError, match="not a valid upload id"):
        load_rows(_cfg("upload:../etc"))


def test_a_missing_file_says_what_sources_are_allowed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; give a .jsonl"):
        load_rows(_cfg(str(tmp_path / "nope.jsonl")))


def test_the_split_is_deterministic_per_seed_and_holds_out_the_fraction() -> None:
    rows = [{"text": str(i)} for i in range(100)]
    train, held = split_rows(rows, 0.1, seed=1)
    assert len(held) == 10 and len(train) == 90
    assert split_rows(rows, 0.1, seed=1) == (train, held)
    assert split_rows(rows, 0.1, seed=2)[1] != held
    assert sorted(r["text"] for r in train + held) == sorted(r["text"] for r in rows)
    assert split_rows(rows, 0.0, seed=1)[1] == []


def test_the_fingerprint_changes_with_the_rows() -> None:
    assert fingerprint_rows([CHAT]) == fingerprint_rows([dict(CHAT)])
    assert fingerprint_rows([CHAT]) != fingerprint_rows([CHAT, CHAT])


def test_chat_labels_cover_only_the_assistant_answer(tokenizer: Any) -> None:
    example, cut = tokenize_row(CHAT, "messages", tokenizer, 512, assistant_only_loss=True)
    assert not cut
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    answer = tokenizer.decode(trained)
    assert answer.startswith("cba") and "Reverse" not in answer
    full, _ = tokenize_row(CHAT, "messages", tokenizer, 512, assistant_only_loss=False)
    assert all(t != IGNORE_INDEX for t in full["labels"])


def test_the_prefix_fallback_masks_like_the_generation_markers(tokenizer: Any) -> None:
    from worker.train.data import _prefix_mask, _template_mask

    marked = _template_mask(tokenizer, CHAT["messages"])
    assert marked is not None
    ids, mask = _prefix_mask(tokenizer, CHAT["messages"])
    assert ids == marked[0]
    # Same answer tokens; the prefix method may add the template's trailing newline after the turn.
    by_markers = [i for i, m in zip(*marked, strict=True) if m]
    by_prefix = [i for i, m in zip(ids, mask, strict=True) if m]
    assert by_prefix[: len(by_markers)] == by_markers and len(by_prefix) - len(by_markers) <= 1


def test_prompt_completion_labels_skip_the_prompt_and_end_with_eos(tokenizer: Any) -> None:
    row = {"prompt": "Upper case: abc ->", "completion": " ABC"}
    example, _ = tokenize_row(row, "prompt_completion", tokenizer, 512, assistant_only_loss=True)
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == " ABC"


def test_long_rows_are_truncated_to_max_seq_len(tokenizer: Any) -> None:
    row = {"text": "x" * 300}
    example, cut = tokenize_row(row, "text", tokenizer, 64, assistant_only_loss=True)
    assert cut and len(example["input_ids"]) == 64 == len(example["labels"])


def test_prepare_data_refuses_when_truncation_leaves_nothing_to_learn(tokenizer: Any, tmp_path: Path) -> None:
    long_prompt = {
        "messages": [{"role": "user", "content": "y" * 200}, {"role": "assistant", "content": "ok"}]
    }
    cfg = _cfg(str(_jsonl(tmp_path / "long.jsonl", [long_prompt] * 10)))
    cfg.training.max_seq_len = 32
    with pytest.raises(DatasetError, match="raise training.max_seq_len"):
        prepare_data(cfg, tokenizer)


def test_prepare_data_on_a_preset_splits_and_tokenizes(tokenizer: Any) -> None:
    cfg = _cfg("preset:reverse-letters", num_rows=40, eval_fraction=0.25)
    data = prepare_data(cfg, tokenizer)
    assert data.format == "messages" and len(data.train) == 30 and len(data.eval) == 10
    assert all(any(t != IGNORE_INDEX for t in e["labels"]) for e in data.train)


def test_packing_joins_whole_examples_without_loss_across_boundaries() -> None:
    from worker.train.data import pack_examples

    def ex(*ids: int) -> dict[str, list[int]]:
        return {"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": list(ids)}

    packs = pack_examples([ex(1, 2, 3), ex(4, 5), ex(6, 7, 8, 9), ex(10)], max_seq_len=5)
    assert [p["input_ids"] for p in packs] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert packs[0]["labels"] == [-100, 2, 3, -100, 5]
    assert packs[1]["labels"] == [-100, 7, 8, 9, -100]
    assert all(len(p["attention_mask"]) == len(p["input_ids"]) for p in packs)


def test_prepare_data_packs_only_the_training_split(tokenizer: Any) -> None:
    cfg = _cfg("preset:reverse-letters", num_rows=40, eval_fraction=0.25)
    cfg.training.packing = True
    cfg.training.max_seq_len = 128
    data = prepare_data(cfg, tokenizer)
    assert len(data.eval) == 10 and len(data.train) < 30
    assert all(len(p["input_ids"]) <= 128 for p in data.train)


def test_the_collator_pads_labels_with_ignore_index() -> None:
    batch = PadCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
            {"input_ids": [5], "attention_mask": [1], "labels": [5]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_the_collator_rounds_widths_up_for_compiled_layers_but_never_past_max_seq_len() -> None:
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [5] * n} for n in (3, 70)]
    assert PadCollator(0, multiple_of=64, max_width=512)(rows)["input_ids"].shape == (2, 128)
    # 70 rounds to 128, but the configured limit is 100: pad only to 100.
    batch = PadCollator(0, multiple_of=64, max_width=100)(rows)
    assert batch["input_ids"].shape == (2, 100)
    assert batch["labels"][0].tolist() == [5] * 3 + [-100] * 97
    assert batch["attention_mask"][1].tolist() == [1] * 70 + [0] * 30
    assert PadCollator(0)(rows)["input_ids"].shape == (2, 70)
