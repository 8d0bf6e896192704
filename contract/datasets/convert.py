"""Convert one row of a recognised layout (a `layouts.Spec`) to the internal form training uses.

Turns are renamed to system/user/assistant/tool; content-part lists are joined (media parts refused);
tool calls become OpenAI-shaped calls whose arguments are an object (what chat templates expect, whether
the file wrote them as an object or as a JSON string); `tools` become function definitions; alpaca's
instruction, input, system and history become chat turns. What cannot be converted is an `Issue`.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from contract.datasets.layouts import MEDIA_PARTS, TEXT_PARTS, TOOL_CALL_ROLES, Spec, _maybe_json
from contract.datasets.problems import MAX_ROW_CHARS, Issue, _unreadable_json


def _text(value: Any, where: str) -> str | Issue | None:
    """A turn's text: a string, or content parts of type text joined; media parts refused."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for part in value:
            if isinstance(part, str):
                out.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in TEXT_PARTS and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif kind in MEDIA_PARTS or (isinstance(part, dict) and any(part.get(k) for k in MEDIA_PARTS)):
                return Issue(
                    f"{where} holds {kind or 'media'} content; Tuneboard trains on text only for now: remove "
                    "the image/audio parts to train on the text alone",
                    "images or audio",
                )
            else:
                return Issue(f"{where} has a content part of type {kind!r}; use text parts", "content")
        return "".join(out)
    return Issue(f"{where} needs a string 'content'", "content")


def _arguments(value: Any, name: str, where: str) -> dict[str, Any] | Issue:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return Issue(f"{where}: the arguments of tool call {name!r} are not valid JSON", "tool call")
    if not isinstance(value, dict):
        return Issue(f"{where}: the arguments of tool call {name!r} must be a JSON object", "tool call")
    return value


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]] | Issue | None:
    """OpenAI tool_calls, {name, arguments} objects, or a JSON string of them, as OpenAI-shaped calls with
    the arguments as an object (what chat templates expect)."""
    value = _maybe_json(value)
    if value is None or value == []:
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return Issue(f"{where}: tool calls must be a list of {{name, arguments}} objects", "tool call")
    calls = []
    for call in value:
        fn = (
            call.get("function")
            if isinstance(call, dict) and isinstance(call.get("function"), dict)
            else call
        )
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            return Issue(f"{where}: every tool call needs a function name", "tool call")
        args = _arguments(fn.get("arguments"), fn["name"], where)
        if isinstance(args, Issue):
            return args
        out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


def _tools(value: Any) -> list[dict[str, Any]] | Issue | None:
    value = _maybe_json(value)
    if value in (None, "", []):
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        return Issue("'tools' must be a list of function definitions (JSON objects)", "tools")
    out = []
    for tool in value:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if not isinstance(fn.get("name"), str):
            return Issue("every entry of 'tools' needs a function 'name'", "tools")
        fn = {k: _maybe_json(v) for k, v in fn.items() if v is not None}
        out.append({"type": "function", "function": fn})
    return out


PYTHON_TEXT = (
    " (it holds Python's text of a list, as `datasets`' to_csv writes nested columns; save the file with "
    "to_json or to_parquet instead)"
)


def _python_literal(text: str) -> Any:
    """A list pandas' to_csv wrote as Python's repr ("[{'role': 'user', ...}]"), or None."""
    if len(text) > MAX_ROW_CHARS or not text.lstrip().startswith("[{'"):
        return None  # the parser's tree costs tens of times the text: only row-sized cells are tried
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        return None
    return value if isinstance(value, list) else None


def _turns(value: Any, spec: Spec, column: str, first: int = 1) -> list[dict[str, Any]] | Issue:
    if isinstance(value, str):  # CSV and `datasets`' Parquet carry the turns as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            literal = _python_literal(value)
            if literal is None:
                return Issue(
                    f"column {column!r} is not valid JSON ({exc.msg}); write the list of turns as JSON"
                    + (PYTHON_TEXT if value.lstrip().startswith("[{'") else ""),
                    "not valid JSON",
                )
            value = literal
        except (RecursionError, ValueError) as exc:
            return Issue(f"column {column!r}: {_unreadable_json(exc)}", "unreadable JSON")
    if not isinstance(value, list):
        return Issue(f"{column!r} must be a non-empty list of {{role, content}} objects", "turn shape")
    out = []
    for i, item in enumerate(value, start=first):
        if not isinstance(item, dict):
            return Issue(
                f"message {i} is not an object with {spec.role_key!r} and {spec.content_key!r}", "turn shape"
            )
        theirs = item.get(spec.role_key)
        role = spec.roles.get(theirs, theirs) if isinstance(theirs, str) else theirs
        if role not in ("system", "user", "assistant", "tool"):
            return Issue(
                f"message {i} has role {theirs!r}; use system, user, assistant or tool, or map it with "
                "dataset.columns.roles",
                "unknown role",
            )
        turn: dict[str, Any] = {"role": role}
        where = f"message {i} ({role})"
        if theirs in TOOL_CALL_ROLES:  # ShareGPT: the value is the call itself
            calls = _tool_calls(item.get(spec.content_key), where)
            if isinstance(calls, Issue):
                return calls
            turn["content"], turn["tool_calls"] = "", calls
        else:
            raw = item.get(spec.content_key)
            if role == "tool" and isinstance(raw, dict | int | float | bool):
                raw = json.dumps(raw, ensure_ascii=False)  # a structured tool result, shown as JSON
            text = _text(raw, where)
            if isinstance(text, Issue):
                return text
            calls = _tool_calls(item.get("tool_calls") or item.get("function_call"), where)
            if isinstance(calls, Issue):
                return calls
            if calls:
                turn["tool_calls"] = calls
            turn["content"] = text if text is not None or not calls else ""
            if text is None and not calls:
                turn["content"] = None  # the row check names it
        for key in ("name", "tool_call_id"):
            if isinstance(item.get(key), str) and role == "tool":
                turn[key] = item[key]
        if item.get("weight") is not None:
            turn["weight"] = item["weight"]
        out.append(turn)
    return out


def _str(row: dict[str, Any], column: str | None) -> str:
    value = row.get(column) if column else None
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _chat_from_columns(row: dict[str, Any], spec: Spec) -> list[dict[str, Any]] | Issue:
    """prompt (+input) / response / history columns as chat messages."""
    assert spec.prompt and spec.response
    prompt, response = _maybe_json(row.get(spec.prompt)), _maybe_json(row.get(spec.response))
    if isinstance(prompt, list) or isinstance(response, list):
        head = _turns(
            prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}], spec, spec.prompt
        )
        if isinstance(head, Issue):
            return head
        for turn in head:  # the prompt's own answers are context, not what is learned
            if turn["role"] == "assistant":
                turn["weight"] = 0
        tail_src = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        tail = _turns(tail_src, spec, spec.response, first=len(head) + 1)
        if isinstance(tail, Issue):
            return tail
        return head + tail
    messages: list[dict[str, Any]] = []
    history = _maybe_json(row.get(spec.history)) if spec.history else None
    if history:
        if not isinstance(history, list) or not all(isinstance(p, list) and len(p) == 2 for p in history):
            return Issue("'history' must be a list of [prompt, answer] pairs", "history")
        for q, a in history:
            messages += [{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
    user = _str(row, spec.prompt)
    extra = _str(row, spec.input)
    if extra.strip():
        user = f"{user}\n{extra}" if user.strip() else extra
    if row.get(spec.prompt) is None and not extra:
        return Issue(f"missing column {spec.prompt!r}", "missing columns")
    if row.get(spec.response) is None:
        return Issue(f"missing column {spec.response!r}", "missing columns")
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _str(row, spec.response)},
    ]
    return messages


def convert(row: dict[str, Any], spec: Spec) -> dict[str, Any] | Issue | None:
    """`row` in the internal form of spec.format, an Issue saying what is wrong, or None: left out on
    purpose (a KTO row labelled false)."""
    if spec.format == "preference":  # kept as it is, for preference tuning
        if row.get("chosen") is None or ("rejected" in spec.used() and row.get("rejected") is None):
            return Issue("a preference pair needs both 'chosen' and 'rejected'", "missing columns")
        return row
    if spec.label and spec.label in row:
        label = row[spec.label]
        if isinstance(label, str):
            label = {"true": True, "false": False, "1": True, "0": False}.get(label.strip().lower(), label)
        if label is False or label == 0:
            return None
        if label is not True and label != 1:
            return Issue(f"'label' is {row[spec.label]!r}; use true or false", "label")
    if spec.format == "text":  # checked, then cut to its column, by the caller
        return {"text": row.get(spec.text)} if spec.text and spec.text != "text" else row
    if spec.format == "prompt_completion":
        return row
    if spec.messages:
        if spec.messages not in row or row[spec.messages] is None:
            return Issue(f"missing column {spec.messages!r}", "missing columns")
        messages = _turns(row[spec.messages], spec, spec.messages)
        if isinstance(messages, Issue):
            return messages
        if spec.response and row.get(spec.response) is not None:
            more = _maybe_json(row[spec.response])
            tail = _turns(
                more if isinstance(more, list) else [{"role": "assistant", "content": more}],
                spec,
                spec.response,
                first=len(messages) + 1,
            )
            if isinstance(tail, Issue):
                return tail
            messages += tail
    else:
        messages = _chat_from_columns(row, spec)
        if isinstance(messages, Issue):
            return messages
    system = _str(row, spec.system).strip()
    if system and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    out: dict[str, Any] = {"messages": messages}
    if spec.tools:
        tools = _tools(row.get(spec.tools))
        if isinstance(tools, Issue):
            return tools
        if tools:
            out["tools"] = tools
    return out
