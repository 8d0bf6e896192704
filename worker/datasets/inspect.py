"""Inspect a dataset through a model's tokenizer: the first rows as the model sees them, and token lengths.

Run as a short subprocess by the app (the web process never loads transformers):

    python -m worker.datasets.inspect --dataset PATH|preset:NAME --model NAME --max-seq-len N

It prints one JSON object on stdout: {"rows": [{"rendered", "tokens", "segments"}], "histogram":
{"bins", "counts"}, "over_max", "total", ...}; on failure {"error": "..."} and exit status 2.
Token counts come from the training code's own `tokenize_row`, so they are the lengths training sees.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.catalog import PRESET_DATASETS, PRESET_PREFIX
from contract.datasets import DatasetError, DatasetInvalid, check_file, detect_format

PREVIEW_ROWS = 5
OVER_MAX_SHOWN = 2  # rows past max_seq_len added to the preview when the first rows all fit
MAX_INSPECTED_ROWS = 20_000  # token lengths of more rows than this take too long for an interactive answer
BINS_BELOW_MAX = 16  # histogram bins from 0 to max_seq_len
MAX_BINS = 32


class InspectError(RuntimeError):
    """The dataset or the model cannot be inspected; the message says why and what to do."""


def load_dataset_rows(
    source: str, *, num_rows: int = 256, seed: int = 42
) -> tuple[list[dict[str, Any]], str]:
    """(rows, format) of a file (checked and converted by the shared checker) or of a generated preset."""
    if source.startswith(PRESET_PREFIX):
        name = source[len(PRESET_PREFIX) :]
        if name not in PRESET_DATASETS:
            raise InspectError(f"unknown preset dataset {source!r}; available: {', '.join(PRESET_DATASETS)}")
        from worker.presets import generate_dataset

        rows = generate_dataset(name, num_rows, seed)
        return rows, detect_format(rows[0])
    path = Path(source)
    if not path.is_file():
        raise InspectError(f"dataset file {source} does not exist")
    from worker.train.data import INTAKE_FILE, upload_mapping

    mapping = upload_mapping(path) if (path.parent / INTAKE_FILE).is_file() else None
    checked = check_file(path, columns=mapping)  # an upload: with the mapping it was checked with
    return checked.rows, checked.format


def load_tokenizer(model_name: str) -> Any:
    """The tokenizer training would use for `model_name`, with the recipe's chat template if it has none."""
    from worker.train.loading import ModelLoadError, load_model_config, resolve_model_source

    try:
        source = resolve_model_source(model_name)  # a wrong path fails here, before transformers loads
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source.location, revision=source.revision)
        if not getattr(tok, "chat_template", None):
            from worker.train.recipes import recipe_for

            tok.chat_template = recipe_for(load_model_config(source)).chat_template
    except ModelLoadError as exc:
        raise InspectError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise InspectError(
            f"cannot load the tokenizer of {model_name}: {exc}; use a preset or a model available offline"
        ) from None
    return tok


def histogram(lengths: Sequence[int], max_seq_len: int) -> dict[str, list[int]]:
    """Equal-width bins (lo, hi] from 0, one edge at max_seq_len when the width divides it, so the bins
    starting at or past max_seq_len hold exactly the rows that will be cut; the last bin takes overflow."""
    width = max(1, math.ceil(max_seq_len / BINS_BELOW_MAX))
    top = max(max(lengths, default=0), max_seq_len)
    n = max(1, min(MAX_BINS, (top - 1) // width + 2))  # +1: a bin past max_seq_len, even when empty
    counts = [0] * n
    for length in lengths:
        counts[min(n - 1, max(0, length - 1) // width)] += 1
    return {"bins": [i * width for i in range(n + 1)], "counts": counts}


def _segments(tok: Any, ids: list[int], labels: list[int], max_seq_len: int) -> list[dict[str, Any]]:
    """The rendered row cut into runs: 'prompt' (no loss), 'trained' (loss), 'cut' (beyond max_seq_len)."""
    from worker.train.data import IGNORE_INDEX

    kinds = [
        "cut" if i >= max_seq_len else ("trained" if lab != IGNORE_INDEX else "prompt")
        for i, lab in enumerate(labels)
    ]
    runs: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or kinds[i] != kinds[start]:
            runs.append({"kind": kinds[start], "text": tok.decode(ids[start:i], skip_special_tokens=False)})
            start = i
    return runs


def inspect_rows(
    rows: list[dict[str, Any]], fmt: str, tok: Any, *, max_seq_len: int, preview_rows: int = PREVIEW_ROWS
) -> dict[str, Any]:
    """The preview rows (rendered, token count, trained/cut segments) and the token-length histogram."""
    from worker.datasets.templates import tool_rendering_problem
    from worker.train.data import IGNORE_INDEX, tokenize_row

    unbounded = 1 << 30  # count every token; the cut is shown, not applied
    inspected = rows[:MAX_INSPECTED_ROWS]
    lengths: list[int] = []
    nothing_left = 0
    preview: list[dict[str, Any]] = []

    def shown(index: int, example: dict[str, list[int]]) -> dict[str, Any]:
        ids = example["input_ids"]
        return {
            "row": index + 1,
            "rendered": tok.decode(ids, skip_special_tokens=False),
            "tokens": len(ids),
            "segments": _segments(tok, ids, example["labels"], max_seq_len),
        }

    for i, row in enumerate(inspected):
        refused = tool_rendering_problem(tok, row) if fmt == "messages" else None
        if refused is not None:
            raise InspectError(f"row {i + 1}: {refused}; use a model whose chat template supports tools")
        example, _ = tokenize_row(row, fmt, tok, unbounded, assistant_only_loss=True)
        lengths.append(len(example["input_ids"]))
        # a row whose every trained token lies past max_seq_len teaches nothing once cut
        trained = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
        if trained and trained[0] >= max_seq_len:
            nothing_left += 1
        if i < preview_rows:
            preview.append(shown(i, example))
    # what max_seq_len cuts matters most: show a few rows that go past it too, if the first ones do not
    over = [i for i, n in enumerate(lengths) if n > max_seq_len and i >= preview_rows][:OVER_MAX_SHOWN]
    for i in over if preview_rows else []:
        example, _ = tokenize_row(inspected[i], fmt, tok, unbounded, assistant_only_loss=True)
        preview.append(shown(i, example))
    return {
        "rows": preview,
        "histogram": histogram(lengths, max_seq_len),
        "over_max": sum(1 for n in lengths if n > max_seq_len),
        "answer_cut": nothing_left,  # rows that lose every trained token to the cut
        "total": len(lengths),
        "dataset_rows": len(rows),
        "format": fmt,
        "max_seq_len": max_seq_len,
        "max_tokens": max(lengths, default=0),
        "mean_tokens": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
    }


def preference_preview(
    source: str, model: str, max_seq_len: int, shown: int, num_rows: int, seed: int
) -> dict[str, Any] | None:
    """Preference data (chosen/rejected pairs, or answers labelled good/bad for KTO) side by side: the
    prompt and each answer through the chat template, tokens per side and what max_seq_len cuts; None for
    any other layout (previewed as supervised fine-tuning rows)."""
    from contract.preference import preference_layout

    if source.startswith(PRESET_PREFIX):
        from worker.presets import generate_dataset

        rows = generate_dataset(source[len(PRESET_PREFIX) :], num_rows, seed)
    else:
        from worker.train.data import read_file

        path = Path(source)
        if not path.is_file():
            raise InspectError(f"dataset file {source} does not exist")
        rows = read_file(path).rows
    if not rows or preference_layout(rows[0]) is None:
        return None
    from worker.train.preference.data import preview_rows

    tok = load_tokenizer(model)
    result = preview_rows(rows[:MAX_INSPECTED_ROWS], tok, max_seq_len, limit=max(1, shown))
    result.update(format="preference", model=model, total=len(rows), dataset_rows=len(rows))
    return result


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, inspect, and return the JSON answer (raises InspectError/DatasetError)."""
    parser = argparse.ArgumentParser(prog="python -m worker.datasets.inspect", description=__doc__)
    parser.add_argument("--dataset", required=True, help="A data file or preset:<name>.")
    parser.add_argument("--model", required=True, help="preset:<name>, a local model directory or a hub id.")
    parser.add_argument("--max-seq-len", type=int, required=True, help="Rows longer than this are cut.")
    parser.add_argument("--rows", type=int, default=PREVIEW_ROWS, help="How many rows to render.")
    parser.add_argument("--num-rows", type=int, default=256, help="Rows to generate for a preset dataset.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for a preset dataset.")
    args = parser.parse_args(argv)
    if args.max_seq_len < 1:
        raise InspectError("--max-seq-len must be at least 1")
    pairs = preference_preview(
        args.dataset, args.model, args.max_seq_len, args.rows, args.num_rows, args.seed
    )
    if pairs is not None:
        return pairs
    rows, fmt = load_dataset_rows(args.dataset, num_rows=args.num_rows, seed=args.seed)
    tok = load_tokenizer(args.model)
    result = inspect_rows(rows, fmt, tok, max_seq_len=args.max_seq_len, preview_rows=max(0, args.rows))
    result["model"] = args.model
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the JSON answer (or {"error", "problems"}) and return the exit status."""
    try:
        result = run(argv)
    except DatasetInvalid as exc:
        problems = [p.as_dict() for p in exc.problems]
        groups = [g.as_dict() for g in exc.groups]
        print(json.dumps({"error": str(exc), "problems": problems, "groups": groups, "total": exc.total}))
        return 2
    except (InspectError, DatasetError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
