"""Training data: load rows from cfg.dataset.source, check them, split, and tokenize with loss masks.

Sources: `preset:<name>` (generated), a .jsonl/.json/.csv/.parquet file, or `upload:<id>` (an uploaded
dataset stored as $TUNEBOARD_DATASETS_DIR/<id>/data.jsonl). Formats: chat `messages`, `prompt` +
`completion`, or plain `text`, detected from the first row unless cfg.dataset.format says.

Labels: with assistant_only_loss, only assistant turns (messages) or the completion (prompt/completion)
carry a loss; everything else is -100. Assistant spans come from the chat template's {% generation %}
markers when it has them, else from rendering growing prefixes of the conversation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.catalog import PRESET_PREFIX
from contract.config import JobConfig

# Reading and checking rows is shared with the app (upload checks): one reader, one checker.
from contract.datasets import (  # noqa: F401  (re-exported: callers import them from here)
    FORMATS,
    ROLES,
    DatasetError,
    DatasetInvalid,
    Problem,
    check_loaded,
    check_rows,
    detect_format,
    read_file,
    read_rows,
    read_with_problems,
    validate_rows,
)
from worker.datasets.templates import tool_rendering_problem

UPLOAD_PREFIX = "upload:"
INTAKE_FILE = "intake.json"  # next to an upload's data.jsonl: what the app understood, and its mapping
IGNORE_INDEX = -100


@dataclass
class PreparedData:
    """Tokenized train/eval examples plus what the report and model card need."""

    format: str
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    fingerprint: str  # sha256 of the rows actually used (canonical JSON)
    num_truncated: int


# ---------------------------------------------------------------------------------------------- loading


def resolve_source(source: str) -> Path:
    """The file behind a non-preset source (uploads live under $TUNEBOARD_DATASETS_DIR/<id>/data.jsonl)."""
    if source.startswith(UPLOAD_PREFIX):
        upload_id = source[len(UPLOAD_PREFIX) :].strip()
        if not upload_id or "/" in upload_id or "\\" in upload_id or upload_id in (".", ".."):
            raise DatasetError(f"dataset.source {source!r} is not a valid upload id; use upload:<id>")
        root = os.environ.get("TUNEBOARD_DATASETS_DIR")
        if not root:
            raise DatasetError(
                f"dataset.source is {source!r} but TUNEBOARD_DATASETS_DIR is not set; run the job from the "
                "app (it sets it) or point dataset.source at the file"
            )
        path = Path(root) / upload_id / "data.jsonl"
        if not path.is_file():
            raise DatasetError(f"uploaded dataset {upload_id!r} not found at {path}; upload it again")
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"dataset file {source} does not exist; give a .jsonl/.json/.csv/.parquet path, upload:<id> or "
            "preset:<name>"
        )
    return path


def load_rows(cfg: JobConfig) -> list[dict[str, Any]]:
    """All rows of cfg.dataset.source (capped by max_rows), in the internal form (see contract.datasets:
    every detected layout, or the dataset.columns mapping, is converted). Rows of a file are checked here,
    so problems name their lines in the file; generated rows are checked by `validate_rows`."""
    return _load(cfg)[0]


def _load(cfg: JobConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, where each row is: "train.jsonl line 3" or "row 3")."""
    source = cfg.dataset.source
    if source.startswith(PRESET_PREFIX):
        from worker.presets import generate_dataset

        rows = generate_dataset(source[len(PRESET_PREFIX) :], cfg.dataset.num_rows, cfg.training.seed)
        if cfg.dataset.max_rows is not None:
            rows = rows[: cfg.dataset.max_rows]
        where = [f"row {i}" for i in range(1, len(rows) + 1)]
    else:
        path = resolve_source(source)
        loaded, found = read_with_problems(path)
        cap = cfg.dataset.max_rows
        if cap is not None:  # only the rows training uses are checked
            loaded.rows, loaded.lines = loaded.rows[:cap], loaded.lines[:cap]
        columns: Any = cfg.dataset.columns
        if columns is None and source.startswith(UPLOAD_PREFIX):
            columns = upload_mapping(path)
        try:
            checked = check_loaded(loaded, found, name=path.name, fmt=cfg.dataset.format, columns=columns)
        except DatasetInvalid as exc:
            headline = f"{exc.total} bad row(s) in {path.name}: "
            raise DatasetInvalid(
                exc.problems, total=exc.total, name=path.name, headline=headline, groups=exc.groups
            ) from None
        rows = checked.rows
        where = [f"{path.name} {checked.unit} {line}" for line in checked.lines]
    if not rows:
        raise DatasetError(f"dataset {source} has no rows; add some examples")
    return rows, where


def upload_mapping(path: Path) -> dict[str, Any] | None:
    """The dataset.columns mapping an upload was checked with (intake.json, written by the app)."""
    try:
        intake = json.loads((path.parent / INTAKE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mapping = intake.get("mapping") if isinstance(intake, dict) else None
    return mapping if isinstance(mapping, dict) and mapping else None


# ---------------------------------------------------------------------------------------------- splitting


def split_rows(
    rows: Sequence[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shuffle with `seed` and hold out eval_fraction of the rows (at least one when the fraction > 0)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and len(rows) > 1:
        n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    eval_idx = sorted(order[:n_eval])
    train_idx = order[n_eval:]
    return [rows[i] for i in train_idx], [rows[i] for i in eval_idx]


def fingerprint_rows(rows: Sequence[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON of the rows, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- tokenizing


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return list(ids)


def _trained(message: dict[str, Any]) -> bool:
    """An assistant turn is trained unless its weight is 0."""
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, m in enumerate(mask):
        if m and (i == 0 or not mask[i - 1]):
            runs.append((i, i + 1))
        elif m:
            runs[-1] = (runs[-1][0], i + 1)
    return runs


def _template_mask(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[int], list[int]] | None:
    """Token ids and assistant mask from the template's {% generation %} blocks; None if it has none (or
    its blocks cannot be matched to the assistant turns when some have weight 0)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "generation" not in template:
        return None
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    mask = list(out.get("assistant_masks") or [])
    ids = _ids(out)
    if len(mask) != len(ids) or not any(mask):
        return None
    answers = [m for m in messages if m["role"] == "assistant"]
    if any(not _trained(m) for m in answers):
        runs = _runs(mask)
        if len(runs) != len(answers):
            return None  # the prefix renderings below know which turn each token belongs to
        for (start, end), message in zip(runs, answers, strict=True):
            if not _trained(message):
                mask[start:end] = [0] * (end - start)
    return ids, mask


def _prefix_mask(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[int], list[int]]:
    """Assistant mask by rendering growing prefixes: tokens added by a trained assistant turn are trained
    on (not those of a weight-0 turn, a tool result or a user turn)."""
    ids: list[int] = []
    mask: list[int] = []
    for i, message in enumerate(messages):
        rendered = _ids(
            tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=True, return_dict=True)
        )
        if rendered[: len(ids)] != ids:  # the template rewrote earlier turns; fall back to whole-sequence
            return rendered, [1] * len(rendered)
        start = len(ids)
        if message["role"] == "assistant" and i > 0:
            # The turn header ("<start_of_turn>model\n") is the prompt's job, not the answer: skip it.
            header = _ids(
                tokenizer.apply_chat_template(
                    messages[:i], tools=tools, tokenize=True, return_dict=True, add_generation_prompt=True
                )
            )
            if rendered[: len(header)] == header and len(header) >= start:
                mask.extend([0] * (len(header) - start))
                start = len(header)
        mask.extend([1 if _trained(message) else 0] * (len(rendered) - start))
        ids = rendered
    return ids, mask


def tokenize_row(
    row: dict[str, Any], fmt: str, tokenizer: Any, max_seq_len: int, assistant_only_loss: bool
) -> tuple[dict[str, list[int]], bool]:
    """One example as input_ids/attention_mask/labels, and whether it was truncated."""
    if fmt == "messages":
        messages = row["messages"]
        tools = row.get("tools") or None
        got = _template_mask(tokenizer, messages, tools) if assistant_only_loss else None
        if got is None:
            if assistant_only_loss:
                ids, mask = _prefix_mask(tokenizer, messages, tools)
            else:
                ids = _ids(
                    tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)
                )
                mask = [1] * len(ids)
        else:
            ids, mask = got
    elif fmt == "prompt_completion":
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = list(prompt) + list(completion) + eos
        mask = [0 if assistant_only_loss else 1] * len(prompt) + [1] * (len(completion) + len(eos))
    else:
        text = tokenizer(row["text"])["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = list(text) + eos
        mask = [1] * len(ids)
    truncated = len(ids) > max_seq_len
    ids, mask = ids[:max_seq_len], mask[:max_seq_len]
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, truncated


def check_tool_rendering(rows: Sequence[dict[str, Any]], where: Sequence[str], tokenizer: Any) -> None:
    """Refuse rows with tools when the model's chat template cannot render them (naming the rows)."""
    problems: list[Problem] = []
    total = 0
    for i, row in enumerate(rows):
        message = tool_rendering_problem(tokenizer, row)
        if message is None:
            continue
        total += 1
        if len(problems) < 10:
            problems.append(Problem(i + 1, f"{where[i]}: {message}", "row", "tool template"))
    if total:
        raise DatasetInvalid(
            problems,
            total=total,
            headline=f"{total} row(s) with tools cannot be trained on this model: use a model whose chat "
            "template supports tools, or leave those rows out: ",
        )


def prompt_of(row: dict[str, Any], fmt: str, tokenizer: Any) -> tuple[str, str]:
    """(prompt text to generate from, reference answer) for a sample generation."""
    if fmt == "messages":
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        text = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        return text, messages[last]["content"]
    if fmt == "prompt_completion":
        return row["prompt"], row["completion"]
    words = row["text"].split(" ")
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def user_prompt(text: str, fmt: str, tokenizer: Any) -> str:
    """A configured sample prompt, wrapped in the chat template when the data is chat-formatted."""
    if fmt == "messages" and getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )
    return text


def prepare_data(cfg: JobConfig, tokenizer: Any) -> PreparedData:
    """Load, check, split and tokenize cfg.dataset for `tokenizer`."""
    rows, where = _load(cfg)
    preset = cfg.dataset.source.startswith(PRESET_PREFIX)
    fmt = cfg.dataset.format if preset and cfg.dataset.format != "auto" else detect_format(rows[0])
    validate_rows(rows, fmt)
    if fmt == "messages":
        check_tool_rendering(rows, where, tokenizer)
    train_rows, eval_rows = split_rows(rows, cfg.dataset.eval_fraction, cfg.training.seed)
    truncated = 0
    tokenized: list[list[dict[str, list[int]]]] = []
    for part in (train_rows, eval_rows):
        out = []
        for row in part:
            example, cut = tokenize_row(
                row, fmt, tokenizer, cfg.training.max_seq_len, cfg.dataset.assistant_only_loss
            )
            truncated += int(cut)
            out.append(example)
        tokenized.append(out)
    trainable = [e for e in tokenized[0] if any(lab != IGNORE_INDEX for lab in e["labels"][1:])]
    if not trainable:
        raise DatasetError(
            f"after truncation to training.max_seq_len={cfg.training.max_seq_len} no training row has any "
            "token to learn (the answers are cut off); raise training.max_seq_len"
        )
    train = pack_examples(tokenized[0], cfg.training.max_seq_len) if cfg.training.packing else tokenized[0]
    return PreparedData(
        format=fmt,
        train_rows=train_rows,
        eval_rows=eval_rows,
        train=train,
        eval=tokenized[1],
        fingerprint=fingerprint_rows(rows),
        num_truncated=truncated,
    )


def pack_examples(examples: Sequence[dict[str, list[int]]], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Concatenate whole examples, in order, into rows of at most max_seq_len tokens, padding-free.

    No example is split, and no token attends across a boundary: each row carries `position_ids` that
    restart at 0 for every example, and the collator then leaves out the attention mask, so transformers
    builds a per-example (block-diagonal) causal mask from them — for sdpa and eager attention, and the
    variable-length kernel for flash attention. Each example's first label is masked, since the row's
    shift would otherwise have the previous example's last token predict it.
    """
    packs: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
    for example in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(example["input_ids"]) > max_seq_len:
            packs.append(current)
            current = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
        labels = list(example["labels"])
        if labels:
            labels[0] = IGNORE_INDEX
        current["input_ids"].extend(example["input_ids"])
        current["attention_mask"].extend(example["attention_mask"])
        current["labels"].extend(labels)
        current["position_ids"].extend(range(len(example["input_ids"])))
    if current["input_ids"]:
        packs.append(current)
    return packs


TOKENS_KEY = "tuneboard_tokens"  # a batch's real (non-padding) token count; the trainer pops it


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens in a collated batch, packed or not."""
    if TOKENS_KEY in batch:
        return int(batch[TOKENS_KEY])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum().item())
    return 0


class PadCollator:
    """Right-pads a batch; labels pad with -100 so padding never carries loss."""

    def __init__(self, pad_token_id: int, multiple_of: int = 1, max_width: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        # Compiled layers recompile for every new batch shape: rounding the width up to a multiple (never
        # past `max_width`, the configured max_seq_len) keeps the number of shapes small.
        self.multiple_of = max(1, multiple_of)
        self.max_width = max_width

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Stack `features` into padded LongTensors.

        Packed rows (with "position_ids") come out without an attention mask: the padding becomes one more
        segment whose positions restart at 0, so the per-example mask keeps every real token away from it,
        and its labels are -100. `TOKENS_KEY` holds the real token count for throughput.
        """
        import torch

        width = max(len(f["input_ids"]) for f in features)
        rounded = -(-width // self.multiple_of) * self.multiple_of
        if self.max_width is not None:
            rounded = min(rounded, max(width, self.max_width))
        width = rounded
        packed = "position_ids" in features[0]
        keys = ["input_ids", "labels", "position_ids" if packed else "attention_mask"]
        batch: dict[str, list[list[int]]] = {k: [] for k in keys}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if packed:
                batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
        out: dict[str, Any] = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out[TOKENS_KEY] = sum(sum(f["attention_mask"]) for f in features)
        return out
