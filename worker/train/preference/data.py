"""Preference data: load and check paired / labelled rows, render them through the chat template, collate.

Rows are read by contract/preference.py (`read_pair`, `read_labelled`: the layouts TRL and LLaMA-Factory
use) and rendered with the tokenizer's chat template: the prompt with the generation prompt, then prompt +
answer, so the answer tokens are exactly what the model would generate after the prompt. Each example
keeps `prompt_ids` and its answers' ids apart; the collator builds the sequences (chosen rows, then
rejected rows, in one batch: one forward for both) and the answer-only labels.

KTO reads paired data as one good and one bad answer per pair (as TRL does); its held-out pairs stay pairs,
so reward accuracy is measured on pairs for every method. KTO's KL estimate pairs each prompt with another
example's answer (fixed at preparation, as TRL's precomputed KL completions are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.catalog import PRESET_DATASETS, PRESET_PREFIX
from contract.config import JobConfig
from contract.datasets import DatasetError, DatasetInvalid, Problem
from contract.preference import (
    PAIRED,
    Messages,
    layout_refusal,
    preference_layout,
    preference_row_problem,
    read_labelled,
    read_pair,
)

IGNORE_INDEX = -100
MAX_LISTED = 100


@dataclass
class PreferenceData:
    """Tokenized preference examples; shaped like worker.train.data.PreparedData where the run reads it."""

    format: str  # "paired" | "unpaired"
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    train: list[dict[str, Any]]  # each has input_ids (prompt + first answer) for the run's reference logits
    eval: list[dict[str, Any]]
    fingerprint: str
    num_truncated: int
    num_dropped: int = 0  # pairs whose answers were the same tokens after truncation


def _preset_layout(source: str) -> str | None:
    info = PRESET_DATASETS.get(source[len(PRESET_PREFIX) :])
    return PAIRED if info is not None and info.format == "preference" else None


def refuse_mismatch(cfg: JobConfig, first_row: Any) -> None:
    """DatasetError saying which method fits when cfg.method does not fit the data's layout."""
    layout = preference_layout(first_row)
    if cfg.dataset.source.startswith(PRESET_PREFIX):
        layout = _preset_layout(cfg.dataset.source) or layout
    message = layout_refusal(cfg.method, layout)
    if message is not None:
        raise DatasetError(message)


def refuse_preference_data_for_sft(cfg: JobConfig, load_error: DatasetError | None = None) -> None:
    """For method sft: refuse a preference preset or file with the sentence naming the methods that fit.

    Called before the SFT data checks (presets: from the catalogue) and when they fail (files: the first
    row is read again to tell a preference file from a broken one).
    """
    source = cfg.dataset.source
    if source.startswith(PRESET_PREFIX):
        if _preset_layout(source) is not None:
            refuse_mismatch(cfg, {})
        return
    if load_error is None:
        return
    from worker.train.data import read_file, resolve_source

    try:
        rows = read_file(resolve_source(source)).rows
    except DatasetError:
        return
    if rows:
        refuse_mismatch(cfg, rows[0])


def load_preference_rows(cfg: JobConfig) -> tuple[list[dict[str, Any]], str]:
    """All rows of cfg.dataset.source and their layout; bad rows are refused by line, all at once."""
    from worker.train.data import read_file, resolve_source

    source = cfg.dataset.source
    name = source
    if source.startswith(PRESET_PREFIX):
        from worker.presets import generate_dataset

        rows = generate_dataset(source[len(PRESET_PREFIX) :], cfg.dataset.num_rows, cfg.training.seed)
        lines, unit = list(range(1, len(rows) + 1)), "row"
    else:
        path = resolve_source(source)
        loaded = read_file(path)
        rows, lines, unit, name = loaded.rows, loaded.lines, loaded.unit, path.name
    if cfg.dataset.max_rows is not None:
        rows, lines = rows[: cfg.dataset.max_rows], lines[: cfg.dataset.max_rows]
    if not rows:
        raise DatasetError(f"dataset {source} has no rows; add some examples")
    refuse_mismatch(cfg, rows[0])
    layout = preference_layout(rows[0]) or PAIRED
    problems: list[Problem] = []
    total = 0
    for row, line in zip(rows, lines, strict=True):
        message = preference_row_problem(row, layout)
        if message is not None:
            total += 1
            if len(problems) < MAX_LISTED:
                problems.append(Problem(line, message, unit))
    if total:
        what = "preference pairs" if layout == PAIRED else "labelled answers"
        raise DatasetInvalid(problems, total=total, name=name, headline=f"{total} bad row(s) of {what}: ")
    return rows, layout


# ------------------------------------------------------------------------------------------- tokenizing


class Renderer:
    """Token ids of a prompt and of an answer after it, through the tokenizer's chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def _ids(self, out: Any) -> list[int]:
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in ids]

    def prompt(self, prompt: Messages) -> list[int]:
        """The prompt as the model sees it just before answering."""
        if self.chat:
            return self._ids(
                self.tokenizer.apply_chat_template(
                    prompt, tokenize=True, return_dict=True, add_generation_prompt=True
                )
            )
        text = "\n".join(m["content"] for m in prompt)
        return self._ids(self.tokenizer(text))

    def answer(self, prompt: Messages, prompt_ids: list[int], answer: Messages) -> list[int]:
        """The answer's tokens after `prompt_ids` (its turn end included)."""
        if self.chat:
            full = self._ids(
                self.tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
            )
            if full[: len(prompt_ids)] != prompt_ids:
                raise DatasetError(
                    "the chat template renders the prompt differently once an answer follows it, so the "
                    "answer tokens cannot be told apart; use a model whose template appends turns"
                )
            return full[len(prompt_ids) :]
        text = "\n".join(m["content"] for m in answer)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return self._ids(self.tokenizer(text, add_special_tokens=False)) + eos


def fit(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int], bool]:
    """Prompt and answer cut to `max_len` tokens together: the answer keeps at least half (or all of
    itself), the prompt keeps its end (the part next to the answer)."""
    if len(prompt) + len(answer) <= max_len:
        return prompt, answer, False
    keep_answer = max(max_len - len(prompt), min(len(answer), max_len // 2))
    keep_prompt = max_len - keep_answer
    return prompt[len(prompt) - keep_prompt :], answer[:keep_answer], True


def pair_example(renderer: Renderer, row: dict[str, Any], max_len: int) -> tuple[dict[str, Any] | None, int]:
    """A paired row as {prompt_ids, chosen_ids, rejected_ids}; None when truncation made the answers equal."""
    prompt, chosen, rejected = read_pair(row)
    p = renderer.prompt(prompt)
    pc, c, cut_c = fit(p, renderer.answer(prompt, p, chosen), max_len)
    pr, r, cut_r = fit(p, renderer.answer(prompt, p, rejected), max_len)
    # both sides share one prompt: the shorter cut of it
    shared = pc if len(pc) <= len(pr) else pr
    if c == r:
        return None, int(cut_c or cut_r)
    return {"input_ids": shared + c, "prompt_ids": shared, "chosen_ids": c, "rejected_ids": r}, int(
        cut_c or cut_r
    )


def labelled_example(renderer: Renderer, row: dict[str, Any], max_len: int) -> tuple[dict[str, Any], int]:
    """An unpaired row as {prompt_ids, completion_ids, label}."""
    prompt, completion, label = read_labelled(row)
    p = renderer.prompt(prompt)
    p, c, cut = fit(p, renderer.answer(prompt, p, completion), max_len)
    return {"input_ids": p + c, "prompt_ids": p, "completion_ids": c, "label": label}, int(cut)


def unroll_pairs(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs as KTO examples: the chosen answer labelled good, the rejected one bad."""
    out: list[dict[str, Any]] = []
    for pair in pairs:
        for key, label in (("chosen_ids", True), ("rejected_ids", False)):
            ids = pair[key]
            out.append(
                {
                    "input_ids": pair["prompt_ids"] + ids,
                    "prompt_ids": pair["prompt_ids"],
                    "completion_ids": ids,
                    "label": label,
                }
            )
    return out


def add_kl_answers(examples: list[dict[str, Any]], answer_key: str, shift: int) -> None:
    """KTO's KL pairs: each prompt with the answer of the example `shift` places on (another prompt's)."""
    n = len(examples)
    for i, example in enumerate(examples):
        example["kl_ids"] = (
            list(examples[(i + shift) % n][answer_key]) if n > 1 else list(example[answer_key])
        )


def prepare_preference_data(cfg: JobConfig, tokenizer: Any) -> PreferenceData:
    """Load, check, split and tokenize preference data for cfg.method."""
    from worker.train.data import fingerprint_rows, split_rows

    rows, layout = load_preference_rows(cfg)
    train_rows, eval_rows = split_rows(rows, cfg.dataset.eval_fraction, cfg.training.seed)
    renderer = Renderer(tokenizer)
    max_len = cfg.training.max_seq_len
    truncated = dropped = 0
    parts: list[list[dict[str, Any]]] = []
    for part in (train_rows, eval_rows):
        examples: list[dict[str, Any]] = []
        for row in part:
            if layout == PAIRED:
                example, cut = pair_example(renderer, row, max_len)
                if example is None:
                    dropped += 1
                else:
                    examples.append(example)
            else:
                example, cut = labelled_example(renderer, row, max_len)
                examples.append(example)
            truncated += cut
        parts.append(examples)
    train, held_out = parts
    if not train:
        raise DatasetError(
            f"no training pair is left: after truncation to training.max_seq_len={max_len} tokens the chosen "
            "and rejected answers are the same; raise training.max_seq_len"
        )
    if cfg.method == "kto":
        if layout == PAIRED:
            train = unroll_pairs(train)
            add_kl_answers(train, "completion_ids", shift=2)  # the next pair's answer: another prompt
            add_kl_answers(held_out, "chosen_ids", shift=1)
        else:
            add_kl_answers(train, "completion_ids", shift=1)
            add_kl_answers(held_out, "completion_ids", shift=1)
        if not any(e["label"] for e in train) or all(e["label"] for e in train):
            raise DatasetError(
                "KTO needs answers labelled true and answers labelled false; this dataset has only one kind"
            )
    return PreferenceData(
        format=layout,
        train_rows=train_rows,
        eval_rows=eval_rows,
        train=train,
        eval=held_out,
        fingerprint=fingerprint_rows(rows),
        num_truncated=truncated,
        num_dropped=dropped,
    )


def sample_rows(data: PreferenceData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Held-out and training rows as `messages` rows (prompt + preferred answer), for sample generations."""

    def as_messages(row: dict[str, Any]) -> dict[str, Any]:
        if data.format == PAIRED:
            prompt, chosen, _ = read_pair(row)
            return {"messages": prompt + chosen}
        prompt, completion, _ = read_labelled(row)
        return {"messages": prompt + completion}

    return [as_messages(r) for r in data.eval_rows[:8]], [as_messages(r) for r in data.train_rows[:8]]


# ------------------------------------------------------------------------------------------- collating


class PreferenceCollator:
    """Batches of preference examples as padded tensors; answer tokens only carry labels.

    Paired examples: `input_ids` holds every chosen sequence, then every rejected one (2 × B rows).
    Labelled examples: B rows and a `desirable` flag each. With KL answers (KTO) the `kl_*` tensors hold
    the mismatched sequences. Precomputed reference log-probs come along as `ref_logps` / `ref_kl_logps`.
    """

    def __init__(self, pad_token_id: int, multiple_of: int = 1, max_width: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple_of = max(1, multiple_of)
        self.max_width = max_width

    def _pad(self, seqs: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(p) + len(a) for p, a in seqs)
        rounded = -(-width // self.multiple_of) * self.multiple_of
        if self.max_width is not None:
            rounded = min(rounded, max(width, self.max_width))
        ids, mask, labels = [], [], []
        for prompt, answer in seqs:
            pad = rounded - len(prompt) - len(answer)
            ids.append(prompt + answer + [self.pad_token_id] * pad)
            mask.append([1] * (len(prompt) + len(answer)) + [0] * pad)
            labels.append([IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            # the first position whose logits a loss reads (it predicts the earliest answer's first token)
            "answer_start": max(0, min(len(p) for p, _ in seqs) - 1),
        }

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from worker.train.data import TOKENS_KEY

        paired = "chosen_ids" in features[0]
        if paired:
            seqs = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
            seqs += [(f["prompt_ids"], f["rejected_ids"]) for f in features]
        else:
            seqs = [(f["prompt_ids"], f["completion_ids"]) for f in features]
        out = self._pad(seqs)
        if not paired:
            out["desirable"] = torch.tensor([bool(f["label"]) for f in features])
        if "kl_ids" in features[0]:
            kl = self._pad([(f["prompt_ids"], f["kl_ids"]) for f in features])
            out.update({f"kl_{k}": v for k, v in kl.items()})
        if "ref_logps" in features[0]:
            if paired:
                ref = [f["ref_logps"][0] for f in features] + [f["ref_logps"][1] for f in features]
            else:
                ref = [f["ref_logps"][0] for f in features]
            out["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
            if "ref_kl_logps" in features[0]:
                out["ref_kl_logps"] = torch.tensor([f["ref_kl_logps"] for f in features], dtype=torch.float32)
        out[TOKENS_KEY] = int(out["attention_mask"].sum().item())
        return out


# ------------------------------------------------------------------------------------------- preview


def preview_rows(
    rows: list[dict[str, Any]], tokenizer: Any, max_seq_len: int, limit: int = 20
) -> dict[str, Any]:
    """Side by side for a dataset preview: each row's prompt and answers as text, tokens per side, and
    what max_seq_len cuts (the same rendering and truncation training uses). JSON-able."""
    renderer = Renderer(tokenizer)
    layout = preference_layout(rows[0]) if rows else None
    out: list[dict[str, Any]] = []
    for row in rows[:limit]:
        item: dict[str, Any] = {}
        try:
            if layout == PAIRED:
                prompt, chosen, rejected = read_pair(row)
                answers = {"chosen": chosen, "rejected": rejected}
            else:
                prompt, completion, label = read_labelled(row)
                answers = {"completion": completion}
                item["label"] = label
        except ValueError as exc:
            out.append({"problem": str(exc)})
            continue
        p = renderer.prompt(prompt)
        item["prompt"] = "\n".join(m["content"] for m in prompt)
        item["prompt_tokens"] = len(p)
        for side, answer in answers.items():
            ids = renderer.answer(prompt, p, answer)
            kept_prompt, kept, cut = fit(p, ids, max_seq_len)
            item[side] = answer[-1]["content"]
            item[f"{side}_tokens"] = len(ids)
            if cut:
                item[f"{side}_cut"] = {
                    "prompt_tokens_dropped": len(p) - len(kept_prompt),
                    "answer_tokens_dropped": len(ids) - len(kept),
                }
        out.append(item)
    return {"layout": layout, "max_seq_len": max_seq_len, "rows": out}
