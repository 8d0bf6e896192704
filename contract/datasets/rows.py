"""Checks of rows in the internal form training uses: chat `messages`, `prompt` + `completion`, or `text`.

Chat rows must be renderable by a chat template: an optional system message first, then a user turn, and
after it assistant turns answering users; an assistant turn may call tools (`tool_calls`), and `tool`
turns carrying the results follow it. `weight` 0 or 1 on an assistant turn says whether it is trained.
Every message returned is an `Issue` whose kind groups like problems.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from contract.datasets.problems import (
    EXPECTED_COLUMNS,
    FORMATS,
    DatasetError,
    Issue,
    Problem,
    _Collector,
    _unreadable_json,
)


def _columns(row: dict[str, Any]) -> str:
    names = [str(k) for k in row if k is not None][:10]
    return ", ".join(repr(n) for n in names) if names else "no columns"


def detect_format(row: dict[str, Any]) -> str:
    """messages | prompt_completion | text, from the columns of one row (DatasetError when none fits)."""
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    raise DatasetError(missing_columns_message(row))


def missing_columns_message(row: dict[str, Any]) -> str:
    """Which columns a row has and which it lacks, for a row that fits no format."""
    if "prompt" in row and "completion" not in row:
        return f"missing column 'completion' (it has 'prompt'); expected {EXPECTED_COLUMNS}"
    if "completion" in row and "prompt" not in row:
        return f"missing column 'prompt' (it has 'completion'); expected {EXPECTED_COLUMNS}"
    return f"missing columns: the row has {_columns(row)}; expected {EXPECTED_COLUMNS}"


def _message_problem(i: int, m: Any) -> Issue | None:
    if not isinstance(m, dict):
        return Issue(f"message {i} is not an object with 'role' and 'content'", "turn shape")
    role = m.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        return Issue(f"message {i} has role {role!r}; use system, user, assistant or tool", "unknown role")
    content = m.get("content")
    calls = m.get("tool_calls")
    if calls is not None and role != "assistant":
        return Issue(f"message {i} ({role}) has tool_calls; only assistant turns call tools", "tool call")
    if calls is not None:
        if not isinstance(calls, list) or not calls:
            return Issue(f"message {i} (assistant): 'tool_calls' must be a non-empty list", "tool call")
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
                return Issue(f"message {i} (assistant): every tool call needs a function name", "tool call")
            if not isinstance(fn.get("arguments"), dict):
                return Issue(
                    f"message {i} (assistant): the arguments of tool call {fn['name']!r} must be a JSON "
                    "object",
                    "tool call",
                )
    weight = m.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        return Issue(
            f"message {i} has weight {weight!r}; only 0 (not trained) and 1 (trained) are honoured", "weight"
        )
    if weight is not None and role != "assistant":
        return Issue(
            f"message {i} ({role}) has a weight; only assistant turns are trained, so drop it", "weight"
        )
    if not isinstance(content, str):
        return Issue(f"message {i} ({role}) needs a string 'content'", "content")
    if not content.strip() and not calls and role != "tool":
        return Issue(f"message {i} ({role}) is empty; give it some text or remove the turn", "empty turn")
    return None


def _chat_problem(row: dict[str, Any]) -> Issue | None:
    if "messages" not in row:
        return Issue(f"missing column 'messages' (the row has {_columns(row)})", "missing columns")
    msgs = row["messages"]
    if isinstance(msgs, str):  # CSV cells carry the conversation as JSON text
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError as exc:
            return Issue(
                f"column 'messages' is not valid JSON ({exc.msg}); write the list of turns as JSON",
                "not valid JSON",
            )
        except (RecursionError, ValueError) as exc:
            return Issue(f"column 'messages': {_unreadable_json(exc)}", "unreadable JSON")
        row["messages"] = msgs
    if not isinstance(msgs, list) or not msgs:
        return Issue("'messages' must be a non-empty list of {role, content} objects", "turn shape")
    for i, m in enumerate(msgs, start=1):
        problem = _message_problem(i, m)
        if problem is not None:
            return problem
    return _role_order_problem(msgs)


def _role_order_problem(msgs: list[dict[str, Any]]) -> Issue | None:
    """Why a chat template cannot render this sequence of turns (None when it can)."""
    roles = [m["role"] for m in msgs]
    for i, role in enumerate(roles[1:], start=2):
        if role == "system":
            return Issue(f"message {i} is a system message; only the first message may be one", "turn order")
    start = 2 if roles[0] == "system" else 1
    if start > len(roles):
        return Issue("only a system message: add a user turn and an assistant answer", "no answer")
    if roles[start - 1] != "user":
        return Issue(
            f"the conversation starts with an {roles[start - 1]} turn (message {start}); "
            "the chat template needs a user turn first",
            "turn order",
        )
    for n in range(start + 1, len(roles) + 1):
        prev, role = msgs[n - 2], roles[n - 1]
        if role == "tool":
            if not (prev["role"] == "tool" or (prev["role"] == "assistant" and prev.get("tool_calls"))):
                return Issue(
                    f"message {n} is a tool result but message {n - 1} calls no tool; a tool turn follows "
                    "the assistant turn whose tool_calls it answers",
                    "turn order",
                )
        elif prev["role"] == "assistant" and prev.get("tool_calls"):
            return Issue(
                f"message {n - 1} calls a tool but no tool result follows it; add the tool turn",
                "turn order",
            )
        elif role == prev["role"]:
            return Issue(
                f"messages {n - 1} and {n} are both {role} turns; the chat template needs user "
                "and assistant turns to alternate (merge them into one)",
                "turn order",
            )
    trained = [m for m in msgs if m["role"] == "assistant" and m.get("weight", 1) != 0]
    if not any(m["role"] == "assistant" for m in msgs):
        return Issue("no assistant message: there is nothing to learn from this row", "no answer")
    if not trained:
        return Issue(
            "every assistant turn has weight 0: there is nothing to learn from this row", "no answer"
        )
    return None


def row_problem(row: dict[str, Any], fmt: str) -> str | None:
    """What is wrong with one row for format `fmt`, or None. Turns CSV's JSON `messages` cells into lists."""
    if fmt == "messages":
        return _chat_problem(row)
    if fmt == "prompt_completion":
        missing = [c for c in ("prompt", "completion") if row.get(c) is None]
        if missing:
            return Issue(
                f"missing column(s) {', '.join(map(repr, missing))} (the row has {_columns(row)})",
                "missing columns",
            )
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            return Issue("'prompt' and 'completion' must both be strings", "content")
        if not row["prompt"].strip():
            return Issue("'prompt' is empty: give the model something to answer", "empty turn")
        if not row["completion"].strip():
            return Issue("'completion' is empty: there is nothing to learn from this row", "empty turn")
        return None
    if fmt == "text":
        if row.get("text") is None:
            return Issue(f"missing column 'text' (the row has {_columns(row)})", "missing columns")
        if not isinstance(row["text"], str) or not row["text"].strip():
            return Issue("'text' must be a non-empty string", "empty turn")
        return None
    raise DatasetError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")


def check_rows(
    rows: Sequence[dict[str, Any]], fmt: str, *, lines: Sequence[int] | None = None, unit: str = "row"
) -> tuple[list[Problem], int]:
    """(problems (at most MAX_PROBLEMS), total count) of `rows` for format `fmt`, one per bad row."""
    found = _Collector(unit)
    for i, row in enumerate(rows):
        message = row_problem(row, fmt)
        if message is not None:
            found.add(lines[i] if lines is not None else i + 1, message)
    return found.problems, found.total


def validate_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    """Raise DatasetInvalid naming (up to 10) bad rows by number (1-based, in order)."""
    found = _Collector("row")
    for i, row in enumerate(rows):
        message = row_problem(row, fmt)
        if message is not None:
            found.add(i + 1, message)
    found.raise_if_any("", headline=f"{found.total} bad row(s) for format {fmt}: ")
