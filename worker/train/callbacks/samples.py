"""Sample generations: at each evaluation, the model completes a few fixed prompts and reports SAMPLE events.

The prompts are training.sample_prompts, or else the first held-out (or training) rows' prompts.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.config import JobConfig
from contract.protocol import EventKind
from worker.train.reporter import Reporter

NUM_DEFAULT_SAMPLES = 3


def make_sampler(cfg: JobConfig, tokenizer: Any, prepared: Any, device: str) -> Any:
    """A function model -> [(prompt, completion)] generating from fixed prompts (configured or held out)."""
    from worker.train.data import prompt_of, user_prompt

    if cfg.training.sample_prompts:
        prompts = [(p, user_prompt(p, prepared.format, tokenizer)) for p in cfg.training.sample_prompts]
    else:
        rows = (prepared.eval_rows or prepared.train_rows)[:NUM_DEFAULT_SAMPLES]
        prompts = []
        for row in rows:
            text, _ = prompt_of(row, prepared.format, tokenizer)
            shown = text
            if prepared.format == "messages":  # show the question, not the chat template around it
                users = [m["content"] for m in row["messages"] if m["role"] == "user"]
                shown = users[-1] if users else text
            prompts.append((shown, text))

    def sample(model: Any) -> list[tuple[str, str]]:
        import torch

        was_training = model.training
        model.eval()
        out: list[tuple[str, str]] = []
        try:
            with torch.no_grad():
                for shown, text in prompts:
                    enc = tokenizer(
                        text,
                        return_tensors="pt",
                        add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"),
                    )
                    enc = {k: v.to(device) for k, v in enc.items()}
                    gen = model.generate(
                        **enc,
                        max_new_tokens=cfg.training.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                    new = gen[0, enc["input_ids"].shape[1] :]
                    out.append((shown, tokenizer.decode(new, skip_special_tokens=True)))
        finally:
            if was_training:
                model.train()
        return out

    return sample


class SampleCallback(TrainerCallback):
    """Reports what the model generates for the sampler's prompts after each evaluation (rank 0 only)."""

    def __init__(self, *, reporter: Reporter, sampler: Any = None) -> None:
        self.reporter = reporter
        self.sampler = sampler  # callable(model) -> list[(prompt, completion)], or None for no samples

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or self.sampler is None:
            return
        model = kwargs.get("model")
        if model is None:
            return
        for prompt, completion in self.sampler(model):
            self.reporter.emit(
                EventKind.SAMPLE, state.global_step, {"prompt": prompt, "completion": completion}
            )
