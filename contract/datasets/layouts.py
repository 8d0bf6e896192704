"""Recognise a dataset's layout and convert each row to the internal form training uses.

Layouts detected by their columns (or named by `dataset.columns`): OpenAI/TRL chat `messages` (tool
calls, the tool role, a `tools` column, per-turn `weight`, content-part lists), ShareGPT `conversations`
(from/value; human, gpt, system, function_call, observation), alpaca (instruction/input/output with
system and history), prompt/completion as strings (trained as raw text) or as message lists (trained
through the chat template), KTO (`label`), and plain `text`. Cells `datasets` stores as JSON strings
(Parquet, CSV) are parsed. Every layout becomes one `Spec`, so a user's mapping and a detected layout
take the same path. Columns that carry meaning Tuneboard does not use are named with what happens to
them: nothing is dropped in silence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from contract.datasets.problems import EXPECTED_COLUMNS, DatasetError

# what a column name usually means when it is not part of the layout
MEDIA_COLUMNS = {
    "images": "images",
    "image": "images",
    "audio": "audio",
    "audios": "audio",
    "video": "video",
    "videos": "video",
}
MEDIA_PARTS = {
    "image",
    "image_url",
    "input_image",
    "audio",
    "input_audio",
    "audio_url",
    "video",
    "video_url",
    "file",
}
TEXT_PARTS = {"text", "input_text", "output_text"}
OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
TOOL_CALL_ROLES = ("function_call",)  # ShareGPT: an assistant turn whose value is the call as JSON
SAMPLED_ROWS = 100  # rows whose columns and values decide the layout
README_HINT = "the README's 'Bring your own data'"


@dataclass
class Spec:
    """Which column holds what, and how rows become the internal form (`format`)."""

    layout: str
    title: str
    format: str  # messages | prompt_completion | text
    conversion: str
    messages: str | None = None
    prompt: str | None = None
    input: str | None = None
    response: str | None = None
    text: str | None = None
    system: str | None = None
    history: str | None = None
    tools: str | None = None
    label: str | None = None
    role_key: str = "role"
    content_key: str = "content"
    roles: dict[str, str] = field(default_factory=dict)
    mapped: bool = False

    def used(self) -> list[str]:
        """The columns this layout reads."""
        names = [
            self.messages,
            self.prompt,
            self.input,
            self.response,
            self.text,
            self.system,
            self.history,
            self.tools,
            self.label,
        ]
        return [n for n in names if n]


# ---------------------------------------------------------------------------------------------- detection


def _maybe_json(value: Any) -> Any:
    """A cell that `datasets` or a CSV stores as JSON text, parsed when it looks like a list or object."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def _first(rows: list[dict[str, Any]], column: str) -> Any:
    for row in rows:
        value = row.get(column)
        if value not in (None, "", []):
            return _maybe_json(value)
    return None


def _turn_keys(turns: Any) -> tuple[str, str] | None:
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        keys = turns[0]
        if "from" in keys and "value" in keys:
            return "from", "value"
        if "role" in keys:
            return "role", "content"
    return None


def _example(columns: list[str]) -> str:
    pairs = [
        ("question", "answer"),
        ("query", "response"),
        ("input", "output"),
        ("instruction", "response"),
        ("prompt", "response"),
        ("prompt", "answer"),
        ("question", "response"),
        ("context", "response"),
    ]
    for prompt, response in pairs:
        if prompt in columns and response in columns:
            return f'{{"prompt": "{prompt}", "response": "{response}"}}'
    if len(columns) >= 2:
        return f'{{"prompt": "{columns[0]}", "response": "{columns[1]}"}}'
    if columns:
        return f'{{"text": "{columns[0]}"}}'
    return '{"prompt": "<column>", "response": "<column>"}'


def unsupported(columns: list[str], why: str = "") -> str:
    """The 'not supported: X; map it with dataset.columns or convert with ...' sentence."""
    shown = ", ".join(repr(c) for c in columns[:10]) or "no columns"
    what = why or f"a row with columns {shown} (expected {EXPECTED_COLUMNS})"
    return (
        f"not supported: {what}; map it with dataset.columns, e.g. {_example(columns)}, or convert the file "
        f"to one of the layouts in {README_HINT}"
    )


# Where preference data goes. Preference tuning (method: dpo/orpo/kto) reads such files by itself
# (worker/train/preference/); supervised fine-tuning cannot learn from a pair as it is.
PREFERENCE_METHODS_HINT = "train it with method: dpo or orpo (preference tuning)"


def _preference(columns: list[str]) -> str:
    chosen = "'chosen' and 'rejected'" if "rejected" in columns else "'chosen'"
    prompt = '"prompt": "prompt", ' if "prompt" in columns else ""
    return (
        f"not supported for supervised fine-tuning: preference data (columns {chosen}); "
        f"{PREFERENCE_METHODS_HINT}, or, to fine-tune on the preferred answers alone, map them with "
        f'dataset.columns, e.g. {{{prompt}"response": "chosen"}} (or {{"messages": "chosen"}} when it holds '
        "whole conversations); 'rejected' is then left out"
    )


def _media_refusal(column: str, kind: str) -> str:
    return (
        f"column {column!r} holds {kind}: Tuneboard trains on text only for now (multimodal training is not "
        f"available yet), so this dataset cannot be used as it is. Drop the {column!r} column (and any "
        "<image>/<audio> markers in the text) to train on the text alone"
    )


def detect(
    rows: list[dict[str, Any]],
    columns: list[str],
    mapping: dict[str, Any] | None,
    fmt: str,
    accept_preference: bool = False,
) -> Spec:
    """The layout of rows with these columns (DatasetError, saying what to do, when none fits)."""
    sample = rows[:SAMPLED_ROWS]
    for column in columns:
        kind = MEDIA_COLUMNS.get(column.lower())
        if kind and _first(sample, column) is not None:
            raise DatasetError(_media_refusal(column, kind))
    has = set(columns)
    label = "label" if "label" in has else None
    if mapping:
        return _mapped(mapping, sample, label if mapping.get("label", True) else None)
    if fmt == "messages" or (fmt == "auto" and "messages" in has):
        keys = _turn_keys(_first(sample, "messages")) or ("role", "content")
        sharegpt = keys == ("from", "value")
        return Spec(
            "sharegpt" if sharegpt else "messages",
            "ShareGPT turns (from/value) in 'messages'" if sharegpt else "chat messages (OpenAI / TRL)",
            "messages",
            "turns renamed to system/user/assistant/tool" if sharegpt else "none: used as they are",
            messages="messages",
            tools="tools" if "tools" in has else None,
            system="system" if "system" in has and sharegpt else None,
            label=label,
            role_key=keys[0],
            content_key=keys[1],
            roles=dict(SHAREGPT_ROLES if sharegpt else OPENAI_ROLES),
        )
    if fmt == "auto" and "conversations" in has:
        keys = _turn_keys(_first(sample, "conversations")) or ("from", "value")
        sharegpt = keys == ("from", "value")
        return Spec(
            "sharegpt" if sharegpt else "conversations",
            "ShareGPT conversations (from/value)"
            if sharegpt
            else "chat turns (role/content) in 'conversations'",
            "messages",
            "each conversation becomes chat messages; roles human→user, gpt→assistant, "
            "function_call→assistant tool call, observation→tool result"
            if sharegpt
            else "each conversation becomes chat messages",
            messages="conversations",
            tools="tools" if "tools" in has else None,
            system="system" if "system" in has else None,
            label=label,
            role_key=keys[0],
            content_key=keys[1],
            roles=dict(SHAREGPT_ROLES if sharegpt else OPENAI_ROLES),
        )
    if fmt == "auto" and "chosen" in has:
        if not accept_preference:
            raise DatasetError(_preference(columns))
        return Spec(
            "preference",
            "preference pairs (chosen/rejected)",
            "preference",
            f"none: kept as pairs; {PREFERENCE_METHODS_HINT}. Supervised fine-tuning cannot use them as they "
            "are: map 'chosen' as the response with dataset.columns for that",
            prompt="prompt" if "prompt" in has else None,
            response="chosen",
            input="rejected" if "rejected" in has else None,
        )
    if fmt == "auto" and "instruction" in has and "output" in has:
        return Spec(
            "alpaca",
            "alpaca (instruction/input/output)",
            "messages",
            "instruction and input joined into the user turn, output as the assistant's answer"
            + (", system as the system prompt" if "system" in has else "")
            + (", history as earlier turns" if "history" in has else ""),
            prompt="instruction",
            input="input" if "input" in has else None,
            response="output",
            system="system" if "system" in has else None,
            history="history" if "history" in has else None,
            label=label,
        )
    if fmt == "prompt_completion" or (fmt == "auto" and "prompt" in has and "completion" in has):
        as_chat = isinstance(_first(sample, "prompt"), list) or isinstance(_first(sample, "completion"), list)
        return Spec(
            "prompt_completion_chat" if as_chat else "prompt_completion",
            "prompt/completion as message lists (TRL conversational)"
            if as_chat
            else "prompt/completion text",
            "messages" if as_chat else "prompt_completion",
            "prompt and completion messages joined into one conversation; only the completion is trained"
            if as_chat
            else "none: the completion is trained on the prompt as raw text (no chat template)",
            prompt="prompt",
            response="completion",
            tools="tools" if "tools" in has and as_chat else None,
            label=label,
            roles=dict(OPENAI_ROLES),
        )
    if fmt == "text" or (fmt == "auto" and "text" in has):
        return Spec("text", "plain text", "text", "none: trained on the whole text", text="text")
    if "prompt" in has and "completion" not in has:
        raise DatasetError(unsupported(columns, "missing column 'completion' (it has 'prompt')"))
    if "completion" in has and "prompt" not in has:
        raise DatasetError(unsupported(columns, "missing column 'prompt' (it has 'completion')"))
    raise DatasetError(unsupported(columns))


def _mapped(mapping: dict[str, Any], sample: list[dict[str, Any]], label: str | None) -> Spec:
    roles = dict(SHAREGPT_ROLES if mapping.get("role_key") == "from" else OPENAI_ROLES)
    roles.update(mapping.get("roles") or {})
    shown = ", ".join(f"{k}={v!r}" for k, v in mapping.items() if v and k not in ("roles",))
    base: dict[str, Any] = {
        k: mapping.get(k)
        for k in ("messages", "prompt", "input", "response", "text", "system", "history", "tools")
    }
    role_key = mapping.get("role_key") or "role"
    content_key = mapping.get("content_key") or "content"
    if base["text"]:
        return Spec(
            "mapped", "mapped by dataset.columns", "text", f"mapping {shown}", text=base["text"], mapped=True
        )
    if base["messages"]:
        conversion = f"mapping {shown}: the conversation column becomes chat messages"
    else:
        as_chat = isinstance(_first(sample, base["prompt"]), list)
        conversion = f"mapping {shown}: " + (
            "prompt and response messages joined into one conversation"
            if as_chat
            else "prompt (and input) as the user turn, response as the assistant's answer"
        )
    return Spec(
        "mapped",
        "mapped by dataset.columns",
        "messages",
        conversion,
        **base,
        label=label,
        role_key=role_key,
        content_key=content_key,
        roles=roles,
        mapped=True,
    )
