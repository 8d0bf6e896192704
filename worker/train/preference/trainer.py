"""The preference Trainer: the run's own Trainer subclass with DPO / ORPO / KTO as its loss.

Why not TRL's DPOTrainer / ORPOTrainer / KTOTrainer: each brings its own dataset tokenization, collator,
model patching (TRL 1.16 swaps the LM head's forward for a fused one) and training loop hooks, and would
replace worker/train/trainer.py's subclass — its per-step statistics for the guard and the reporter, the
one-walk gradient clipping, the fault hooks the tests use, the compiled-layer batch shapes — and the run's
optimizer choice. Keeping that subclass and computing TRL's losses (worker/train/preference/losses.py) in
its `compute_loss` keeps every lever the SFT path has: the recipe, 4-bit loading, compiled layers, host
tables, activation offload, the optimizer, checkpoints, resume, cancel and the guard work unchanged. The
one lever that does not apply is the fused SFT loss (the preference losses need per-sequence log-probs).

The reference model is the same weights with the adapter switched off (`disable_adapter`): no second copy.
With `preference.reference` precomputed (auto), the reference log-probs are computed once before training
(`precompute_reference`), which saves the reference forward of every step; starting from an earlier
adapter (`init_adapter`) they come from that adapter, the model the run starts from.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

from contract.config import JobConfig

# metric keys the guard reads each step, besides what is charted
FINITE_KEY = "tb_finite"


def uses_reference(cfg: JobConfig) -> bool:
    """DPO and KTO compare with a reference model; ORPO does not."""
    return cfg.method in ("dpo", "kto")


def precomputes_reference(cfg: JobConfig) -> bool:
    """Whether the reference log-probs are computed once before training (auto: yes)."""
    return uses_reference(cfg) and cfg.preference.reference != "live"


def _model_batch(inputs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {
        "input_ids": inputs[f"{prefix}input_ids"],
        "attention_mask": inputs[f"{prefix}attention_mask"],
    }


def sequence_logps(model: Any, inputs: dict[str, Any], prefix: str = "") -> tuple[Any, Any]:
    """Summed answer log-probs and answer token counts of the batch's (or its kl_) sequences.

    Only the positions from the batch's earliest answer on get logits (`logits_to_keep`): the prompt's
    never enter a preference loss, and a vocabulary of 262k makes logits the largest tensor of the step.
    """
    from worker.train.preference.losses import answer_logps

    start = int(inputs.get(f"{prefix}answer_start", 0))
    width = inputs[f"{prefix}input_ids"].shape[1]
    if start > 0:
        out = model(**_model_batch(inputs, prefix), use_cache=False, logits_to_keep=width - start)
        if out.logits.shape[1] == width - start:
            return answer_logps(out.logits, inputs[f"{prefix}labels"][:, start:])
    else:
        out = model(**_model_batch(inputs, prefix), use_cache=False)
    return answer_logps(out.logits, inputs[f"{prefix}labels"])


def reference_context(model: Any, from_start: bool) -> Any:
    """The reference: the adapter switched off, or (`from_start`) left on as it is (precompute from an
    earlier adapter: the model the run starts from)."""
    if from_start:
        return contextlib.nullcontext()
    return model.disable_adapter()


def preference_trainer_class(base: type) -> type:
    """`base` (worker.train.trainer.trainer_class()) with the preference loss of cfg.method."""
    import torch

    class PreferenceTrainer(base):  # type: ignore[valid-type,misc]
        """Computes DPO / ORPO / KTO from one forward over chosen and rejected rows together."""

        def __init__(self, *args: Any, job: JobConfig, monitor: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.job = job
            self.monitor = monitor  # worker.train.preference.guard.PreferenceMonitor
            self.window: dict[str, dict[str, list[Any]]] = {
                "train": defaultdict(list),
                "eval": defaultdict(list),
            }
            # the loss is a mean over sequences: the Trainer divides it by the accumulation steps itself
            self.model_accepts_loss_kwargs = False

        def _reference(self, model: Any, inputs: dict[str, Any], prefix: str = "") -> Any:
            key = "ref_kl_logps" if prefix else "ref_logps"
            if key in inputs:
                return inputs[key]
            unwrapped = self.accelerator.unwrap_model(model)
            with torch.no_grad(), reference_context(unwrapped, from_start=False):
                return sequence_logps(model, inputs, prefix)[0]

        def preference_loss(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            """The loss of cfg.method on one collated batch, and its metrics."""
            from worker.train.preference import losses

            pref = self.job.preference
            logps, tokens = sequence_logps(model, inputs)
            paired = "desirable" not in inputs
            half = logps.shape[0] // 2
            if self.job.method == "orpo":
                loss, metrics = losses.orpo_loss(
                    logps[:half], logps[half:], tokens[:half], tokens[half:], beta=pref.beta
                )
                metrics[FINITE_KEY] = losses.all_finite(logps)
                return loss, metrics
            ref = self._reference(model, inputs)
            if self.job.method == "dpo":
                loss, metrics = losses.dpo_loss(
                    logps[:half],
                    logps[half:],
                    ref[:half],
                    ref[half:],
                    beta=pref.beta,
                    loss_type=pref.loss_type,
                    label_smoothing=pref.label_smoothing,
                    chosen_tokens=tokens[:half],
                    rejected_tokens=tokens[half:],
                )
                metrics[FINITE_KEY] = losses.all_finite(logps, ref)
                return loss, metrics
            # KTO: policy log-probs of the mismatched pairs carry no gradient (as in TRL)
            with torch.no_grad():
                kl_logps = sequence_logps(model, inputs, "kl_")[0]
            ref_kl = self._reference(model, inputs, "kl_")
            if paired:
                desirable = torch.arange(logps.shape[0], device=logps.device) < half
                ref_kl, kl_logps = ref_kl.repeat(2), kl_logps.repeat(2)
            else:
                desirable = inputs["desirable"]
            loss, metrics = losses.kto_loss(
                logps,
                ref,
                desirable,
                kl_logps,
                ref_kl,
                beta=pref.beta,
                desirable_weight=pref.desirable_weight,
                undesirable_weight=pref.undesirable_weight,
            )
            if paired:  # held-out pairs: how often the good answer out-scores the bad one
                rewards = pref.beta * (logps - ref).detach()
                metrics.update(losses.pair_metrics(rewards[:half], rewards[half:]))
            metrics[FINITE_KEY] = losses.all_finite(logps, ref)
            return loss, metrics

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            loss, metrics = self.preference_loss(model, inputs)
            mode = "train" if model.training else "eval"
            for key, value in metrics.items():
                self.window[mode][key].append(value.detach())
            if mode == "train":
                self.monitor.record(metrics)
                if (self.state.global_step + 1) in self.nan_steps:
                    loss = loss * float("nan")
            return (loss, None) if return_outputs else loss

        def prediction_step(
            self, model: Any, inputs: Any, prediction_loss_only: bool, ignore_keys: Any = None
        ) -> Any:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():  # the same autocast as training
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            mode = "eval" if "eval_loss" in logs else "train"
            prefix = "eval_" if mode == "eval" else ""
            if mode == "eval" or "loss" in logs:
                for key, values in self.window[mode].items():
                    if key == FINITE_KEY or not values:
                        continue
                    logs[prefix + key] = float(torch.stack([v.float().cpu() for v in values]).mean())
                self.window[mode] = defaultdict(list)
            super().log(logs, *args, **kwargs)

    return PreferenceTrainer


def precompute_reference(
    model: Any, data: Any, collator: Any, cfg: JobConfig, device: str, *, from_start: bool
) -> None:
    """Store the reference log-probs in every example (`ref_logps`, and `ref_kl_logps` for KTO).

    `from_start`: the adapter as it is now (the run starts from an earlier adapter); else switched off.
    Evaluation mode (no dropout), before the Trainer loads any checkpoint: a resumed attempt computes the
    same numbers from the same starting weights.
    """
    import torch

    was_training = model.training
    model.eval()
    batch_size = max(1, cfg.training.batch_size)
    try:
        with torch.no_grad(), reference_context(model, from_start):
            for examples in (data.train, data.eval):
                for start in range(0, len(examples), batch_size):
                    chunk = [
                        {k: v for k, v in e.items() if not k.startswith("ref_")}
                        for e in examples[start : start + batch_size]
                    ]
                    batch = collator(chunk)
                    batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
                    logps = sequence_logps(model, batch)[0].float().cpu().tolist()
                    kl = (
                        sequence_logps(model, batch, "kl_")[0].float().cpu().tolist()
                        if "kl_input_ids" in batch
                        else None
                    )
                    n = len(chunk)
                    for i, example in enumerate(examples[start : start + batch_size]):
                        paired = "chosen_ids" in example
                        example["ref_logps"] = [logps[i], logps[n + i]] if paired else [logps[i]]
                        if kl is not None:
                            example["ref_kl_logps"] = kl[i]
    finally:
        model.train(was_training)
