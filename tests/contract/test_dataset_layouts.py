"""Every common layout is recognised and converted, what was understood is said, and nothing is dropped in
silence. The fixtures under tests/fixtures/datasets were written for these tests in public formats (the
Parquet files by the `datasets` library itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.config import ColumnsConfig, ConfigError, parse_config
from contract.datasets import DatasetError, DatasetInvalid, check_file
from contract.datasets.mapping import columns_from_text

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"

# file → (layout, internal format, rows used, columns used, columns ignored, held back)
LAYOUTS: dict[str, tuple[str, str, int, list[str], list[str], list[str]]] = {
    "openai_chat_tools.jsonl": ("messages", "messages", 16, ["messages", "tools"], [], []),
    "alpaca.json": (
        "alpaca",
        "messages",
        16,
        ["instruction", "input", "output", "system", "history"],
        [],
        [],
    ),
    "alpaca.csv": ("alpaca", "messages", 16, ["instruction", "input", "output"], ["source"], []),
    "sharegpt.json": ("sharegpt", "messages", 16, ["conversations", "system", "tools"], [], []),
    "prompt_completion.jsonl": (
        "prompt_completion",
        "prompt_completion",
        16,
        ["prompt", "completion"],
        [],
        [],
    ),
    "prompt_completion_chat.jsonl": (
        "prompt_completion_chat",
        "messages",
        16,
        ["prompt", "completion"],
        [],
        [],
    ),
    "kto.jsonl": ("messages", "messages", 8, ["messages", "label"], [], ["label"]),
    "plain.txt": ("text", "text", 16, ["text"], [], []),
    "messages_json_strings.parquet": ("messages", "messages", 16, ["messages"], ["source"], []),
    "messages_structs.parquet": ("messages", "messages", 16, ["messages"], ["source"], []),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_is_detected_and_said(name: str) -> None:
    layout, fmt, rows, used, ignored, held = LAYOUTS[name]
    checked = check_file(FIXTURES / name)
    intake = checked.intake
    assert (intake["layout"], checked.format, intake["rows"], len(checked.rows)) == (layout, fmt, rows, rows)
    assert intake["columns_used"] == used
    assert intake["columns_ignored"] == ignored
    assert [h["column"] for h in intake["held_back"]] == held
    assert intake["conversion"] and intake["layout_title"]


def test_every_chat_layout_becomes_the_same_internal_form() -> None:
    """alpaca, TRL prompt/completion lists and the two Parquet encodings say the same conversation."""
    system = {"role": "system", "content": "You reverse words."}
    first = [system, {"role": "user", "content": "Reverse: apple"}, {"role": "assistant", "content": "elppa"}]
    for name in ("prompt_completion_chat.jsonl", "messages_json_strings.parquet", "messages_structs.parquet"):
        assert check_file(FIXTURES / name).rows[0] == {"messages": first}, name
    river = [system, {"role": "user", "content": "Reverse: river"}, {"role": "assistant", "content": "revir"}]
    assert check_file(FIXTURES / "alpaca.json").rows[1]["messages"] == river  # no input, no history


def test_tool_calls_tool_results_weights_and_content_parts_are_converted() -> None:
    rows = check_file(FIXTURES / "openai_chat_tools.jsonl").rows
    call, tools = rows[0]["messages"], rows[0]["tools"]
    assert call[1] == {"role": "user", "content": "Weather in Paris?"}  # a content-part list, joined
    assert call[2]["tool_calls"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            "id": "call_0",
        }
    ]  # the arguments' JSON string became an object, as chat templates expect
    assert call[3] == {"role": "tool", "content": '{"temp": 10}', "tool_call_id": "call_0"}
    assert tools[0]["function"]["name"] == "get_weather"
    assert [m.get("weight") for m in rows[1]["messages"]] == [None, None, 0, None, 1]
    sharegpt = check_file(FIXTURES / "sharegpt.json").rows[0]
    assert [m["role"] for m in sharegpt["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert sharegpt["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    raw_tools = json.loads((FIXTURES / "sharegpt.json").read_text())[0]["tools"]  # a JSON string of functions
    assert sharegpt["tools"] == [{"type": "function", "function": json.loads(raw_tools)[0]}]
    notes = " ".join(check_file(FIXTURES / "openai_chat_tools.jsonl").intake["notes"])
    assert "8 row(s) with tools" in notes and "8 assistant turn(s) with weight 0" in notes


def test_kto_rows_labelled_false_are_left_out_of_sft_and_said_so() -> None:
    checked = check_file(FIXTURES / "kto.jsonl")
    assert checked.intake["rows_left_out"] == 8 and checked.intake["rows_read"] == 16
    [label] = checked.intake["held_back"]
    assert "leaves out the 8 row(s) labelled false" in label["outcome"]
    assert all(r["messages"][1]["content"] == r["messages"][0]["content"][9:][::-1] for r in checked.rows)
    kept = check_file(FIXTURES / "kto.jsonl", keep_source=True)  # what an upload stores: every row
    assert len(kept.rows) == 16 and kept.intake["rows"] == 8


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("images.jsonl", "column 'images' holds images: Tuneboard trains on text only"),
        ("preference.jsonl", "not supported for supervised fine-tuning: preference data"),
        ("question_answer.csv", "not supported: a row with columns 'question', 'answer', 'id'"),
    ],
)
def test_refusals_name_what_is_unsupported_count_every_row_and_say_how_to_map(
    name: str, fragment: str
) -> None:
    with pytest.raises(DatasetInvalid) as err:
        check_file(FIXTURES / name)
    [group] = err.value.groups
    rows = len([line for line in (FIXTURES / name).read_text().splitlines() if line.strip()])
    rows -= 1 if name.endswith(".csv") else 0
    assert group.kind == "layout" and group.count == rows == err.value.total
    assert fragment in group.example
    if name != "images.jsonl":
        assert (
            "map it with dataset.columns" in group.example or "map them with dataset.columns" in group.example
        )


def test_preference_pairs_pass_an_upload_check_as_pairs() -> None:
    checked = check_file(FIXTURES / "preference.jsonl", accept_preference=True, keep_source=True)
    assert checked.format == "preference"
    assert "method: dpo or orpo" in checked.intake["conversion"]
    assert checked.rows[0] == json.loads((FIXTURES / "preference.jsonl").read_text().splitlines()[0])


def test_a_mapping_reads_what_is_not_detected_and_lists_the_rest() -> None:
    checked = check_file(
        FIXTURES / "question_answer.csv", columns=ColumnsConfig(prompt="question", response="answer")
    )
    assert checked.rows[0] == {
        "messages": [{"role": "user", "content": "Reverse: apple"}, {"role": "assistant", "content": "elppa"}]
    }
    assert checked.intake["columns_used"] == ["question", "answer"]
    assert checked.intake["columns_ignored"] == ["id"]
    chosen = check_file(FIXTURES / "preference.jsonl", columns={"prompt": "prompt", "response": "chosen"})
    assert chosen.rows[0]["messages"][1] == {"role": "assistant", "content": "elppa"}
    [rejected] = chosen.intake["held_back"]
    assert rejected["column"] == "rejected" and "not used" in rejected["outcome"]


def test_a_mapping_with_custom_role_names_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    turns = [{"speaker": "asker", "said": "Reverse: ab"}, {"speaker": "bot", "said": "ba"}]
    path.write_text(json.dumps({"dialog": turns, "sys": "Be brief."}) + "\n", encoding="utf-8")
    mapping = ColumnsConfig(
        messages="dialog",
        system="sys",
        role_key="speaker",
        content_key="said",
        roles={"asker": "user", "bot": "assistant"},
    )
    assert check_file(path, columns=mapping).rows[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse: ab"},
        {"role": "assistant", "content": "ba"},
    ]


def test_the_mapping_is_part_of_the_config_with_field_named_errors() -> None:
    cfg = parse_config(
        {"dataset": {"source": "x.csv", "columns": {"prompt": "question", "response": "answer"}}}
    )
    assert cfg.dataset.columns is not None and cfg.dataset.columns.prompt == "question"
    with pytest.raises(ConfigError) as err:
        parse_config({"dataset": {"source": "x.csv", "columns": {"prompt": "question"}}})
    assert any("dataset.columns" in key for key in err.value.problems), err.value.problems
    assert "response" in " ".join(err.value.problems.values())
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"dataset": {"source": "x.csv", "columns": {"messages": "c", "roles": {"bot": "robot"}}}}
        )
    assert any(key.startswith("dataset.columns.roles") for key in err.value.problems), err.value.problems


def test_a_llama_factory_dataset_info_entry_is_read_as_a_mapping() -> None:
    entry = {
        "my_data": {
            "file_name": "data.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    }
    mapping = columns_from_text(json.dumps(entry))
    assert mapping is not None
    assert (mapping.messages, mapping.role_key, mapping.content_key) == ("conversations", "from", "value")
    assert mapping.roles["human"] == "user" and mapping.roles["observation"] == "tool"
    checked = check_file(FIXTURES / "sharegpt.json", columns=mapping)
    assert checked.rows == check_file(FIXTURES / "sharegpt.json").rows
    alpaca = columns_from_text("file_name: a.json\ncolumns:\n  prompt: question\n  response: answer\n")
    assert alpaca is not None and (alpaca.prompt, alpaca.input, alpaca.response) == (
        "question",
        "input",
        "answer",
    )
    with pytest.raises(DatasetError, match=r"dataset.columns: .*response"):
        columns_from_text('{"prompt": "question"}')
    with pytest.raises(DatasetError, match="ranking"):
        columns_from_text('{"file_name": "p.json", "ranking": true}')


def _bad(tmp_path: Path, rows: list[Any]) -> DatasetInvalid:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    with pytest.raises(DatasetInvalid) as err:
        check_file(path)
    return err.value


def test_every_bad_row_is_counted_and_grouped_by_kind_with_its_first_lines(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    twice = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}
    rows: list[Any] = [good] + [twice] * 999 + ["{oops", "{oops"]
    err = _bad(tmp_path, rows)
    assert err.total == 1001
    kinds = {g.kind: g for g in err.groups}
    assert kinds["turn order"].count == 999 and kinds["turn order"].first_lines == [2, 3, 4, 5, 6]
    assert kinds["not valid JSON"].count == 2 and kinds["not valid JSON"].first_lines == [1001, 1002]
    summary = err.summary()
    assert summary.startswith("1001 bad rows, 2 kinds: 999 × turn order (lines 2, 3, 4, 5, 6, ...)")
    assert "2 × not valid JSON (lines 1001, 1002)" in summary


def test_tool_call_problems_say_tool_calls_not_content(tmp_path: Path) -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}],
    }
    err = _bad(tmp_path, [{"messages": [{"role": "user", "content": "q"}, call]}])
    assert err.groups[0].kind == "tool call"
    assert "arguments of tool call 'f' are not valid JSON" in err.problems[0].message
    orphan = {"role": "tool", "content": "42"}
    err = _bad(tmp_path, [{"messages": [{"role": "user", "content": "q"}, orphan]}])
    assert "tool result but message 1 calls no tool" in err.problems[0].message
    half = {"role": "assistant", "content": "a", "weight": 0.5}
    err = _bad(tmp_path, [{"messages": [{"role": "user", "content": "q"}, half]}])
    assert (
        err.groups[0].kind == "weight" and "only 0 (not trained) and 1 (trained)" in err.problems[0].message
    )
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}
    err = _bad(tmp_path, [{"messages": [image, {"role": "assistant", "content": "a"}]}])
    assert err.groups[0].kind == "images or audio" and "text only" in err.problems[0].message


def test_json_objects_say_where_the_rows_are(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["p1", "p2"], "completion": ["c1", "c2"]})
    for orient in ("columns", "split", "records", "table", "index"):
        path = tmp_path / f"{orient}.json"
        frame.to_json(path, orient=orient)
        assert check_file(path).rows == [
            {"prompt": "p1", "completion": "c1"},
            {"prompt": "p2", "completion": "c2"},
        ], orient
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"meta": {"v": 1}, "examples": [{"text": "a"}]}), encoding="utf-8")
    assert check_file(wrapped).intake["source_note"] == "rows from the JSON object's key 'examples'"
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}), encoding="utf-8")
    with pytest.raises(DatasetError, match="several lists \\('train', 'test'\\); keep only the key"):
        check_file(two)


def test_plain_text_paragraphs_are_rows_with_their_first_line(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("first para\nstill first\n\n\nsecond\n", encoding="utf-8")
    checked = check_file(path)
    assert checked.rows == [{"text": "first para\nstill first"}, {"text": "second"}]
    assert checked.lines == [1, 5]


def test_files_as_pandas_and_datasets_write_them_are_read(tmp_path: Path) -> None:
    import pandas as pd
    from datasets import Dataset

    rows = [{"instruction": "Reverse: ab", "input": "", "output": "ba"}]
    chat = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    Dataset.from_list(rows).to_json(str(tmp_path / "alpaca.jsonl"))
    Dataset.from_list(rows).to_csv(str(tmp_path / "alpaca.csv"))
    pd.DataFrame(chat).to_csv(tmp_path / "pandas_chat.csv", index=False)  # lists as Python's repr
    pd.DataFrame(rows).to_csv(tmp_path / "with_index.csv")  # an unnamed index column first
    expected = {
        "messages": [{"role": "user", "content": "Reverse: ab"}, {"role": "assistant", "content": "ba"}]
    }
    for name in ("alpaca.jsonl", "alpaca.csv", "with_index.csv"):
        assert check_file(tmp_path / name).rows == [expected], name
    assert check_file(tmp_path / "pandas_chat.csv").rows == chat
    Dataset.from_list(chat).to_csv(str(tmp_path / "datasets_chat.csv"))  # numpy's repr: not recoverable
    with pytest.raises(DatasetInvalid, match="save the file with to_json or to_parquet instead"):
        check_file(tmp_path / "datasets_chat.csv")
