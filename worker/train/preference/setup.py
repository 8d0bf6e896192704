"""The hooks worker/train/training.py calls for a preference run (method dpo, orpo or kto).

Kept here so that the run's stages stay one sequence in training.py: check the data, prepare it, start
from init_adapter, build the trainer's parts (Trainer class, collator, guard checks, sampler), compute the
reference log-probs. SFT runs call only `check_data` (which refuses preference data) and `start_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.config import JobConfig
from contract.datasets import DatasetError
from worker.train.log import say


def is_preference(cfg: JobConfig) -> bool:
    """True for dpo, orpo and kto."""
    return cfg.method != "sft"


def check_data(cfg: JobConfig) -> None:
    """Check the dataset before any model work: bad rows by line, and whether it fits cfg.method."""
    from worker.train.preference.data import load_preference_rows, refuse_preference_data_for_sft

    if is_preference(cfg):
        load_preference_rows(cfg)
        return
    from worker.train.data import detect_format, load_rows, validate_rows

    refuse_preference_data_for_sft(cfg)
    try:
        rows = load_rows(cfg)
        validate_rows(rows, cfg.dataset.format if cfg.dataset.format != "auto" else detect_format(rows[0]))
    except DatasetError as exc:
        refuse_preference_data_for_sft(cfg, exc)
        raise


def start_adapter(cfg: JobConfig, model: Any, run_root: Any, reporter: Any) -> bool:
    """Load init_adapter's weights into the new LoRA (a resumed run's checkpoint then replaces them).

    True when the run starts from an earlier adapter.
    """
    if not cfg.init_adapter:
        return False
    from worker.train.preference.init_adapter import load_init_adapter, resolve_init_adapter

    folder = resolve_init_adapter(cfg.init_adapter, run_root)
    say(load_init_adapter(model, cfg, folder), reporter=reporter)
    return True


@dataclass
class PreferenceParts:
    """What the run's Trainer needs for a preference method."""

    trainer_class: type
    collator: Any
    trainer_kwargs: dict[str, Any]
    sampler: Any


def build_parts(
    cfg: JobConfig,
    *,
    base_trainer: type,
    tokenizer: Any,
    data: Any,
    model: Any,
    device: str,
    pad_multiple: int,
    callbacks: Any,
    from_adapter: bool,
    reporter: Any,
) -> PreferenceParts:
    """The Trainer class, collator and guard checks; the reference log-probs when precomputed."""
    import time

    from worker.train.preference.data import PreferenceCollator
    from worker.train.preference.guard import PreferenceMonitor
    from worker.train.preference.trainer import (
        precompute_reference,
        precomputes_reference,
        preference_trainer_class,
    )

    collator = PreferenceCollator(
        tokenizer.pad_token_id, multiple_of=pad_multiple, max_width=cfg.training.max_seq_len
    )
    if precomputes_reference(cfg):
        started = time.monotonic()
        precompute_reference(model, data, collator, cfg, device, from_start=from_adapter)
        whose = "the starting adapter" if from_adapter else "the base model (adapter switched off)"
        say(
            f"Reference log-probabilities of {len(data.train) + len(data.eval)} examples computed once from "
            f"{whose} in {time.monotonic() - started:.1f} s",
            reporter=reporter,
        )
    elif cfg.method != "orpo":
        say(
            "Reference log-probabilities: every step, from the base model with the adapter switched off",
            reporter=reporter,
        )
    monitor = PreferenceMonitor(cfg.preference.max_reward_margin)
    guard = callbacks.guard.guard
    guard.checks.append(monitor.check)
    guard.zero_loss_ok = True  # DPO's hinge loss reaches exactly 0 once every margin is wide enough
    return PreferenceParts(
        trainer_class=preference_trainer_class(base_trainer),
        collator=collator,
        trainer_kwargs={"job": cfg, "monitor": monitor},
        sampler=make_preference_sampler(cfg, tokenizer, data, device),
    )


def make_preference_sampler(cfg: JobConfig, tokenizer: Any, data: Any, device: str) -> Any:
    """Sample generations from held-out prompts: what the model now answers (and so prefers)."""
    from types import SimpleNamespace

    from worker.train.callbacks.samples import make_sampler
    from worker.train.preference.data import sample_rows

    eval_rows, train_rows = sample_rows(data)
    shaped = SimpleNamespace(format="messages", eval_rows=eval_rows, train_rows=train_rows)
    return make_sampler(cfg, tokenizer, shaped, device)
