"""`python -m worker.datasets.inspect` renders rows through the chat template and counts token lengths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from worker.datasets.inspect import histogram, inspect_rows

REPO = Path(__file__).resolve().parents[3]
SHORT = {"messages": [{"role": "user", "content": "Reverse: ab"}, {"role": "assistant", "content": "ba"}]}
LONG = {
    "messages": [
        {"role": "user", "content": "Reverse: " + "a" * 300},
        {"role": "assistant", "content": "b" * 300},
    ]
}


def _inspect(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.datasets.inspect", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_subprocess_renders_rows_and_counts_rows_over_max_seq_len(tmp_path: Path) -> None:
    # the tiny preset's tokenizer is byte-level: a short chat is ~30 tokens, a long one ~600
    rows = [SHORT, LONG, SHORT, LONG, LONG, SHORT, SHORT]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out = _inspect("--dataset", str(path), "--model", "preset:tiny-gemma3n", "--max-seq-len", "128")
    assert code == 0, out
    assert (out["total"], out["over_max"], out["format"], out["max_seq_len"]) == (7, 3, "messages", 128)
    first = out["rows"][0]
    assert "<start_of_turn>user" in first["rendered"] and "Reverse: ab" in first["rendered"]
    assert "".join(s["text"] for s in first["segments"]) == first["rendered"]
    assert [s["text"] for s in first["segments"] if s["kind"] == "trained"] == ["ba<end_of_turn>"]
    assert first["tokens"] < 128
    long_row = out["rows"][1]
    assert long_row["tokens"] > 600
    assert long_row["segments"][-1]["kind"] == "cut"  # what max_seq_len removes is shown, not hidden
    h = out["histogram"]
    assert sum(h["counts"]) == 7 and len(h["bins"]) == len(h["counts"]) + 1
    assert 128 in h["bins"]  # the edge at max_seq_len separates what fits from what is cut
    over = sum(c for lo, c in zip(h["bins"], h["counts"], strict=False) if lo >= 128)
    assert over == 3


def test_bad_input_answers_json_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SHORT) + "\n{oops\n", encoding="utf-8")
    code, out = _inspect("--dataset", str(path), "--model", "preset:tiny-gemma3n", "--max-seq-len", "64")
    assert code == 2
    assert out["problems"] == [
        {"line": 2, "message": out["problems"][0]["message"], "where": "line 2", "kind": "not valid JSON"}
    ]
    assert "not valid JSON" in out["error"]
    path.write_text(json.dumps(SHORT) + "\n", encoding="utf-8")
    code, out = _inspect("--dataset", str(path), "--model", "./no/such/model", "--max-seq-len", "64")
    assert code == 2 and "does not exist; check model.name" in out["error"]


def test_a_preset_dataset_is_generated_and_inspected_with_its_format() -> None:
    from worker.datasets.inspect import load_dataset_rows, load_tokenizer

    rows, fmt = load_dataset_rows("preset:uppercase-completion", num_rows=16)
    assert fmt == "prompt_completion" and len(rows) == 16
    tok = load_tokenizer("preset:tiny-gemma3n")
    out = inspect_rows(rows, fmt, tok, max_seq_len=16, preview_rows=2)
    assert out["total"] == 16
    assert [r["row"] for r in out["rows"]] == [1, 2, 3, 4]  # 2 first rows + 2 more that get cut
    assert rows[0]["prompt"] + rows[0]["completion"] in out["rows"][0]["rendered"]
    # byte-level tokens: "Upper case: word ->" + " WORD" + BOS/EOS is at least 24 tokens, at most 30
    assert out["over_max"] == 16
    assert inspect_rows(rows, fmt, tok, max_seq_len=30, preview_rows=0)["over_max"] == 0


def test_histogram_bins_split_exactly_at_max_seq_len() -> None:
    h = histogram([1, 32, 33, 512, 513, 2000], 512)
    assert h["bins"] == [32 * i for i in range(33)]  # 32 bins at most; the last takes the overflow
    expected = [0] * 32
    expected[0], expected[1], expected[15], expected[16], expected[31] = 2, 1, 1, 1, 1
    assert h["counts"] == expected
    assert sum(c for lo, c in zip(h["bins"], h["counts"], strict=False) if lo >= 512) == 2  # 513 and 2000


def test_histogram_keeps_an_empty_bin_past_max_seq_len() -> None:
    h = histogram([5, 16], 16)
    assert h["bins"] == list(range(18)) and h["counts"][-1] == 0 and sum(h["counts"]) == 2
    assert histogram([], 64)["counts"] == [0] * 17


def test_rows_past_max_seq_len_join_the_preview_when_the_first_rows_fit() -> None:
    from worker.datasets.inspect import load_tokenizer

    rows = [SHORT, SHORT, LONG, SHORT, LONG, LONG]
    tok = load_tokenizer("preset:tiny-gemma3n")
    out = inspect_rows(rows, "messages", tok, max_seq_len=128, preview_rows=1)
    assert [r["row"] for r in out["rows"]] == [1, 3, 5]  # the first row, then two of the three long ones
    assert out["rows"][1]["segments"][-1]["kind"] == "cut"
    assert out["over_max"] == 3
    assert out["answer_cut"] == 3  # the 300-letter prompts alone pass 128 tokens: no answer token survives
    assert inspect_rows(rows, "messages", tok, max_seq_len=400, preview_rows=0)["answer_cut"] == 0
