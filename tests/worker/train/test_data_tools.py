"""The loss mask, token by token: tool calls trained, tool results not, weight-0 turns not, system prompts
not; and a chat template that cannot render tools is refused naming the row.

The tiny presets' tokenizers are byte-level, so the expected ids of a run of text are its own encoding
and the expected mask can be built run by run and compared with every token of the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.config import demo_config
from contract.datasets import DatasetInvalid, check_file
from worker.datasets.inspect import inspect_rows
from worker.presets import gemma_tokenizer, llama_tokenizer
from worker.train.data import IGNORE_INDEX, prepare_data, tokenize_row
from worker.train.recipes.gemma3n import GEMMA_CHAT_TEMPLATE

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
TOOLS_FILE = FIXTURES / "openai_chat_tools.jsonl"


@pytest.fixture(scope="module")
def gemma() -> Any:
    return gemma_tokenizer()


def _expected(tok: Any, runs: list[tuple[bool, str]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    mask: list[int] = []
    for trained, text in runs:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def _mask(tok: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    example, _ = tokenize_row(row, "messages", tok, 1 << 20, assistant_only_loss=True)
    return example["input_ids"], [int(label != IGNORE_INDEX) for label in example["labels"]]


def _tools_json(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row["tools"], ensure_ascii=False)


def test_tool_call_tokens_are_trained_and_tool_results_and_the_prompt_are_not(gemma: Any) -> None:
    row = check_file(TOOLS_FILE).rows[0]
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    runs = [
        (
            False,
            "<bos><start_of_turn>user\nYou answer weather questions with the tool.\n\n"
            f"Tools you can call, one <tool_call> each:\n{_tools_json(row)}\n\n"
            "Weather in Paris?<end_of_turn>\n<start_of_turn>model\n",
        ),
        (True, call + "<end_of_turn>"),
        (False, '\n<start_of_turn>tool\n{"temp": 10}<end_of_turn>\n<start_of_turn>model\n'),
        (True, "It is 10 degrees in Paris.<end_of_turn>"),
        (False, "\n"),
    ]
    assert _mask(gemma, row) == _expected(gemma, runs)


def test_the_llama_preset_masks_tool_calls_the_same_way() -> None:
    tok = llama_tokenizer()
    row = check_file(FIXTURES / "sharegpt.json").rows[0]
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    runs = [
        (
            False,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer weather questions "
            f"with the tool.\n\nTools you can call, one <tool_call> each:\n{_tools_json(row)}<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (True, call + "<|eot_id|>"),
        (
            False,
            '<|start_header_id|>tool<|end_header_id|>\n\n{"temp": 10}<|eot_id|>'
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (True, "It is 10 degrees in Paris.<|eot_id|>"),
    ]
    assert _mask(tok, row) == _expected(tok, runs)


def test_weight_zero_turns_and_the_system_prompt_are_not_trained(gemma: Any) -> None:
    row = check_file(TOOLS_FILE).rows[1]  # system, user, assistant (weight 0), user, assistant (weight 1)
    runs = [
        (
            False,
            "<bos><start_of_turn>user\nYou reverse words.\n\nReverse: river<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
        (False, "I do not know.<end_of_turn>"),  # weight 0: context only
        (False, "\n<start_of_turn>user\nTry again.<end_of_turn>\n<start_of_turn>model\n"),
        (True, "revir<end_of_turn>"),
        (False, "\n"),
    ]
    assert _mask(gemma, row) == _expected(gemma, runs)
    weighted = {"messages": [dict(m) for m in row["messages"]]}
    weighted["messages"][2]["weight"] = 1  # the same row with both answers trained
    both = _mask(gemma, weighted)[1]
    answer = gemma("I do not know.<end_of_turn>", add_special_tokens=False)["input_ids"]
    assert sum(both) == sum(_mask(gemma, row)[1]) + len(answer)


def test_without_generation_markers_the_prefix_renderings_mask_the_same_turns(gemma: Any) -> None:
    tok = gemma_tokenizer()
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for row in check_file(TOOLS_FILE).rows[:2]:
        ids, mask = _mask(tok, row)
        trained = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
        marked_ids, marked = _mask(gemma, row)
        assert ids == marked_ids
        # the prefix path also trains the newline closing each trained turn
        assert trained.replace("<end_of_turn>\n", "<end_of_turn>") == tok.decode(
            [t for t, m in zip(marked_ids, marked, strict=True) if m]
        )
        assert "I do not know." not in trained and '{"temp"' not in trained and "Weather in" not in trained


def test_a_template_that_cannot_render_tools_is_refused_naming_the_row() -> None:
    tok = gemma_tokenizer()
    tok.chat_template = GEMMA_CHAT_TEMPLATE  # the recipe's template: no tools, no tool calls
    cfg = demo_config()
    cfg.dataset.source = str(TOOLS_FILE)
    with pytest.raises(DatasetInvalid) as err:
        prepare_data(cfg, tok)
    assert err.value.total == 8  # the rows with tool calls; the other 8 render fine
    first = err.value.problems[0].message
    assert first.startswith(
        "openai_chat_tools.jsonl line 1: the model's chat template cannot render tool calls"
    )
    assert "get_weather" in first and "supports tools" in str(err.value)


def test_the_preview_marks_the_trained_parts_of_a_tool_row(gemma: Any) -> None:
    rows = check_file(TOOLS_FILE).rows
    answer = inspect_rows(rows, "messages", gemma, max_seq_len=4096, preview_rows=2)
    trained = ["".join(s["text"] for s in r["segments"] if s["kind"] == "trained") for r in answer["rows"]]
    assert trained[0] == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><end_of_turn>'
        "It is 10 degrees in Paris.<end_of_turn>"
    )
    assert trained[1] == "revir<end_of_turn>"
