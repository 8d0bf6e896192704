"""A `dataset.columns` mapping from what a user pastes: the mapping itself (JSON or YAML), or an entry of
LLaMA-Factory's dataset_info.json (its `formatting`, `columns` and `tags`), or a whole dataset_info.json
with one entry. Errors name the field at fault.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from contract.config import ColumnsConfig
from contract.datasets.problems import DatasetError

# LLaMA-Factory's `columns` keys → ours
_LF_COLUMNS = {
    "prompt": "prompt",
    "query": "input",
    "response": "response",
    "system": "system",
    "history": "history",
    "messages": "messages",
    "tools": "tools",
}
# LLaMA-Factory's `tags` → (our role, their default)
_LF_TAGS = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "assistant",
    "system_tag": "system",
}
_LF_HELD = ("chosen", "rejected", "kto_tag", "images", "videos", "audios")


def from_llama_factory(entry: dict[str, Any]) -> dict[str, Any]:
    """The dataset.columns mapping of one dataset_info.json entry (DatasetError for what cannot map)."""
    if entry.get("ranking"):
        raise DatasetError(
            "dataset_info entry: 'ranking: true' is preference data; preference tuning (DPO/ORPO/KTO) is not "
            "available yet. Map 'chosen' as the response to fine-tune on the preferred answers alone"
        )
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        raise DatasetError("dataset_info entry: 'columns' must be an object")
    held = [k for k in _LF_HELD if columns.get(k)]
    media = [k for k in ("images", "videos", "audios") if k in held]
    if media:
        raise DatasetError(
            f"dataset_info entry: columns {', '.join(media)} hold media; Tuneboard trains on text only "
            "for now"
        )
    out: dict[str, Any] = {}
    for theirs, ours in _LF_COLUMNS.items():
        if isinstance(columns.get(theirs), str):
            out[ours] = columns[theirs]
    if formatting == "sharegpt":
        out.setdefault("messages", "conversations")
        tags = entry.get("tags") or {}
        out["role_key"] = tags.get("role_tag", "from")
        out["content_key"] = tags.get("content_tag", "value")
        defaults = {
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
            "function_tag": "function_call",
            "system_tag": "system",
        }
        out["roles"] = {tags.get(tag, defaults[tag]): role for tag, role in _LF_TAGS.items()}
        for key in ("prompt", "input", "response", "history"):
            out.pop(key, None)
    elif formatting == "alpaca":
        out.setdefault("prompt", "instruction")
        out.setdefault("input", "input")
        out.setdefault("response", "output")
        out.pop("messages", None)
    else:
        raise DatasetError(
            f"dataset_info entry: formatting {formatting!r} is unknown; use alpaca or sharegpt"
        )
    return out


def columns_from_text(text: str) -> ColumnsConfig | None:
    """The mapping in `text` (JSON or YAML; a dataset.columns mapping or a LLaMA-Factory entry); None
    when `text` is blank. DatasetError names the field at fault."""
    if not text.strip():
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        try:
            data = json.loads(text)
        except ValueError:
            raise DatasetError(
                'dataset.columns: not valid JSON or YAML; write it as {"prompt": ..., "response": ...}'
            ) from None
    if not isinstance(data, dict):
        raise DatasetError('dataset.columns: expected an object such as {"prompt": "question", ...}')
    if "dataset" in data and isinstance(data["dataset"], dict):
        data = data["dataset"]
    if "columns" in data and isinstance(data["columns"], dict) and set(data) <= {"columns"}:
        data = data["columns"]
    only = next(iter(data.values())) if len(data) == 1 else None
    if isinstance(only, dict) and "file_name" in only:
        data = only  # a whole dataset_info.json with one entry
    # the job form shows a stored mapping as Python's text of the dict: None there means unset
    data = {k: (None if v == "None" else v) for k, v in data.items()}
    if "file_name" in data or "formatting" in data or "tags" in data:
        data = from_llama_factory(data)
    try:
        return ColumnsConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = f"dataset.columns.{where}" if where else "dataset.columns"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise DatasetError(f"{field}: {message}") from None
