"""The shared dataset checker names every bad line and says what is expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.datasets import DatasetError, DatasetInvalid, check_file

USER = {"role": "user", "content": "Reverse: abc"}
ASSISTANT = {"role": "assistant", "content": "cba"}
SYSTEM = {"role": "system", "content": "Be brief."}
CHAT = {"messages": [USER, ASSISTANT]}


def _jsonl(path: Path, lines: list[Any]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path, **kwargs: Any) -> list[tuple[int, str]]:
    with pytest.raises(DatasetInvalid) as err:
        check_file(path, **kwargs)
    return [(p.line, p.message) for p in err.value.problems]


def test_a_good_chat_file_passes_with_its_lines_and_format(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [CHAT, "", {"messages": [SYSTEM, USER, ASSISTANT, USER, ASSISTANT]}])
    checked = check_file(path)
    assert checked.format == "messages"
    assert checked.lines == [1, 3]  # the blank line 2 is skipped but counted
    assert len(checked.rows) == 2


def test_every_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [CHAT, "{not json", CHAT, '["a", "list"]', '{"messages": '])
    found = _problems(path)
    assert [line for line, _ in found] == [2, 4, 5]
    assert found[0][1].startswith("not valid JSON")
    assert "expected a JSON object" in found[1][1] and "a list" in found[1][1]


def test_missing_columns_say_what_is_expected(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ["", {"question": "q", "answer": "a"}])
    [(line, message)] = _problems(path)
    assert line == 2
    assert "'question', 'answer'" in message
    assert "'messages' (chat), 'prompt' + 'completion', or 'text'" in message
    half = _jsonl(tmp_path / "half.jsonl", [{"prompt": "p"}])
    assert "missing column 'completion'" in _problems(half)[0][1]


def test_a_later_row_missing_the_detected_columns_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p"}, {"text": "t"}])
    found = _problems(path)
    assert [line for line, _ in found] == [2, 3]
    assert "missing column(s) 'completion'" in found[0][1]
    assert "missing column(s) 'prompt', 'completion'" in found[1][1]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([USER, {"role": "assistant", "content": "  "}], "message 2 (assistant) is empty"),
        ([{"role": "user", "content": ""}, ASSISTANT], "message 1 (user) is empty"),
        ([USER, USER, ASSISTANT], "messages 1 and 2 are both user turns"),
        ([USER, ASSISTANT, ASSISTANT], "messages 2 and 3 are both assistant turns"),
        ([ASSISTANT, USER], "starts with an assistant turn (message 1)"),
        ([SYSTEM, ASSISTANT], "starts with an assistant turn (message 2)"),
        ([USER, SYSTEM, ASSISTANT], "message 2 is a system message; only the first"),
        ([SYSTEM], "only a system message"),
        ([USER], "no assistant message"),
        ([{"role": "bot", "content": "x"}], "message 1 has role 'bot'"),
        ([{"role": "user", "content": 3}], "message 1 (user) needs a string 'content'"),
        ([], "non-empty list"),
    ],
)
def test_chat_rows_the_template_cannot_render_are_named(
    tmp_path: Path, messages: list[dict[str, Any]], expected: str
) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [CHAT, CHAT, {"messages": messages}])
    [(line, message)] = _problems(path)
    assert line == 3
    assert expected in message


def test_empty_prompts_completions_and_texts_are_named(tmp_path: Path) -> None:
    pc = _jsonl(
        tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": ""}]
    )
    assert _problems(pc) == [(2, "'completion' is empty: there is nothing to learn from this row")]
    text = _jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": " "}])
    assert _problems(text) == [(2, "'text' must be a non-empty string")]


def test_csv_problems_carry_the_line_of_the_record(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\np1,c1\n"multi\nline prompt",c2\np3,\np4,c4,extra\n', encoding="utf-8")
    found = _problems(path)
    # the quoted prompt spans lines 3-4, so the empty completion is on line 5
    assert [line for line, _ in found] == [5, 6]
    assert "'completion' is empty" in found[0][1]
    assert "3 fields but the header on line 1 names 2" in found[1][1]


def test_csv_chat_cells_are_json_and_bad_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    good = json.dumps([USER, ASSISTANT]).replace('"', '""')
    path.write_text(f'messages\n"{good}"\n"[{{not json"\n', encoding="utf-8")
    [(line, message)] = _problems(path)
    assert line == 3 and "column 'messages' is not valid JSON" in message
    path.write_text(f'messages\n"{good}"\n', encoding="utf-8")
    assert check_file(path).rows[0]["messages"] == [USER, ASSISTANT]


def test_parquet_problems_are_numbered_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [USER, ASSISTANT]}, {"messages": [USER, USER]}, {"messages": [ASSISTANT, USER]}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetInvalid) as err:
        check_file(path)
    assert [p.where for p in err.value.problems] == ["row 2", "row 3"]
    assert "both user turns" in err.value.problems[0].message
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        check_file(path)


def test_an_unknown_file_type_and_an_empty_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.xml").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match="unsupported file type '.xml'"):
        check_file(tmp_path / "d.xml")
    (tmp_path / "e.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="has no rows"):
        check_file(tmp_path / "e.jsonl")


def test_the_error_text_names_the_file_and_lines(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "data.jsonl", [CHAT, "{oops"])
    with pytest.raises(DatasetInvalid, match=r"data.jsonl line 2: not valid JSON"):
        check_file(path)


def test_the_training_loader_names_the_lines_of_the_rows_it_uses(tmp_path: Path) -> None:
    from contract.config import demo_config
    from worker.train.data import load_rows

    path = _jsonl(
        tmp_path / "train.jsonl", [CHAT, "", {"messages": [USER, USER]}, CHAT, {"messages": [ASSISTANT]}]
    )
    cfg = demo_config()
    cfg.dataset.source = str(path)
    with pytest.raises(DatasetInvalid) as err:
        load_rows(cfg)
    assert [p.line for p in err.value.problems] == [3, 5]
    assert str(err.value).startswith("2 bad row(s) in train.jsonl: train.jsonl line 3: messages 1 and 2")
    cfg.dataset.max_rows = 1  # only the rows training uses are checked
    assert load_rows(cfg) == [CHAT]
    cfg.dataset.source = str(_jsonl(tmp_path / "odd.jsonl", ["", {"question": "q"}]))
    cfg.dataset.max_rows = None
    with pytest.raises(DatasetError, match=r"odd.jsonl line 2: not supported: a row with columns 'question'"):
        load_rows(cfg)
