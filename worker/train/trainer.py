"""How each optimizer step computes: the Trainer subclass, TrainingArguments, the optimizer, the micro-batch.

`trainer_class()` is HF's Trainer plus the measurements the callbacks read (per-step losses, token counts,
the pre-clip gradient norm, in a StepStats), the fused loss when the plan turned it on, and the fault hooks
of worker/train/faults.py. The optimizer and the micro-batch split are choices a resumed run keeps: its
first attempt's run plan holds them (runs started before the plan: the legacy files named below).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.config import JobConfig, resolve_optimizer
from contract.plan import RunPlan, Source
from contract.rundir import RunDir
from worker.train import faults
from worker.train.data import TOKENS_KEY, batch_tokens
from worker.train.distributed import rank_info

COMPILED_PAD_MULTIPLE = 128  # batch widths when the layers are compiled (worker.train.speed.compile)
LEGACY_OPTIMIZER_FILE = "optimizer-choice.json"  # before the run plan; read only, for runs started then
# What "auto" meant on a GPU before fused AdamW became its choice for small adapters: a run resumed from a
# checkpoint of that time must load its 8-bit optimizer state into the same optimizer.
LEGACY_GPU_OPTIMIZER = "paged_adamw_8bit"


def trainable_parameters(model: Any) -> list[Any]:
    """The tensors of `model` that train (for LoRA: the adapters), in `model.parameters()` order."""
    return [p for p in model.parameters() if p.requires_grad]


def trainer_class() -> type:
    """A Trainer that records per-step losses, token counts and the pre-clip gradient norm."""
    from transformers import Trainer

    class TuneboardTrainer(Trainer):
        """HF Trainer plus the measurements our callbacks need (and the test hooks of worker.train.faults)."""

        def __init__(
            self,
            *args: Any,
            step_stats: Any,
            fused_loss: Any = None,
            drop_last_train: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.drop_last_train = drop_last_train
            self.step_stats = step_stats
            self.fused_loss = (
                fused_loss  # worker.train.speed.fused_loss.FusedLoss, or None for the model's loss
            )
            self.nan_steps = faults.nan_steps()
            self.oom_steps = faults.oom_steps()
            self.step_sleep = faults.step_sleep_s()
            self.trainable_params: tuple[Any, list[Any]] | None = None  # (model, its trainable tensors)

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            result: Any
            if self._use_fused_loss(model, inputs, return_outputs):
                from worker.train.speed.fused_loss import causal_lm_loss

                # the same normalisation as the model's own loss (which the Trainer then scales alike)
                items = num_items_in_batch if self.model_accepts_loss_kwargs else None
                result = causal_lm_loss(model, inputs, self.fused_loss, items)
            else:
                result = super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            if model.training and (self.state.global_step + 1) in self.nan_steps:
                if return_outputs:
                    return result[0] * float("nan"), result[1]
                return result * float("nan")
            return result

        def get_train_dataloader(self) -> Any:
            # Compiled layers: an epoch's short last batch would be a new shape (minutes of recompiling,
            # then dynamic-shape kernels), so training skips it; evaluation keeps every row.
            if not self.drop_last_train:
                return super().get_train_dataloader()
            saved = self.args.dataloader_drop_last
            self.args.dataloader_drop_last = True
            try:
                return super().get_train_dataloader()
            finally:
                self.args.dataloader_drop_last = saved

        def _use_fused_loss(self, model: Any, inputs: Any, return_outputs: bool) -> bool:
            # training only (eval reports logits-based numbers as before), and never through a DataParallel
            # wrapper: the fused path calls the decoder directly
            return (
                self.fused_loss is not None
                and model.training
                and not return_outputs
                and "labels" in inputs
                and self.label_smoother is None
                and self.compute_loss_func is None
                and self.accelerator.unwrap_model(model) is model
            )

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            if (self.state.global_step + 1) in self.oom_steps:
                raise faults.injected_oom(self.state.global_step + 1)
            if self.step_sleep > 0:
                time.sleep(self.step_sleep)
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.step_stats.add_micro(loss.detach(), batch_tokens(inputs))
            return loss

        def _prepare_inputs(self, inputs: Any) -> Any:
            # the collator's token count is for throughput, not a model argument
            return super()._prepare_inputs({k: v for k, v in inputs.items() if k != TOKENS_KEY})

        def _clip_grad_norm(self, model: Any) -> Any:
            # Trainer hands clipping `model.parameters()`: a walk over every module each step (Gemma 3n E2B
            # with LoRA: ~2,800 modules, ~4 ms on a laptop-class core; the GPU sat idle ~13 ms at this point
            # of a profiled H200 step) to find a few hundred trainable tensors. They are fixed for the run,
            # so walk once; frozen ones have no gradient and add nothing to the norm. Sharded set-ups and
            # mixed meshes keep Trainer's own way.
            from accelerate.utils import DistributedType

            plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
            if self.accelerator.distributed_type not in plain or self._has_mixed_mesh_grads(model):
                return super()._clip_grad_norm(model)
            if self.trainable_params is None or self.trainable_params[0] is not model:
                self.trainable_params = (model, trainable_parameters(model))
            return self.accelerator.clip_grad_norm_(self.trainable_params[1], self.args.max_grad_norm)

        def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
            value = super()._get_grad_norm(model, grad_norm=grad_norm)
            self.step_stats.grad_norm = float(value.item() if hasattr(value, "item") else value)
            return value

    return TuneboardTrainer


def probe_micro_batch(
    cfg: JobConfig,
    run_dir: RunDir,
    model: Any,
    fused: Any,
    device: str,
    dtype: str,
    report: Callable[[str, dict[str, Any]], None],
    resuming: bool,
    earlier_plan: RunPlan | None = None,
    plan: RunPlan | None = None,
) -> Any:
    """The micro-batch × accumulation split for training.auto_micro_batch (worker.train.speed.microbatch).

    A resumed run keeps the split it started with: the one its first attempt's plan holds (or, for runs
    started before the plan, micro_batch.json), else the configured one (a run that started without
    probing is not re-split halfway). The choice and its reason go into `plan` when one is given.
    """
    from worker.train.speed import microbatch
    from worker.train.speed.plan import record_micro_batch

    t = cfg.training
    step_rows = t.batch_size * t.grad_accum
    kept = microbatch.Split(t.batch_size, t.grad_accum)

    def log(level: str, message: str) -> None:
        report("log", {"level": level, "message": message})

    def chosen(split: Any, source: Source, reason: str) -> Any:
        if plan is not None:
            record_micro_batch(plan, split, source, reason)
        return split

    earlier = None
    if earlier_plan is not None and earlier_plan.micro_batch is not None:
        earlier = microbatch.split_from_dict(earlier_plan.micro_batch)
    elif earlier_plan is None:
        earlier = microbatch.load_legacy_split(run_dir.root)
    if earlier is not None:
        log("info", f"Auto micro-batch: keeping this run's earlier choice, {earlier.describe()}")
        return chosen(earlier, "resumed", f"kept from the first attempt: {earlier.describe()}")
    if resuming:
        log("info", f"Auto micro-batch: this run started without a probe; keeping {kept.describe()}")
        return chosen(kept, "resumed", "the run started without a probe: configured split kept")
    if not device.startswith("cuda") or rank_info().distributed:
        where = "on CPU" if not device.startswith("cuda") else "with several GPU processes"
        log(
            "warning",
            f"Auto micro-batch runs on one GPU only; {where} the configured {kept.describe()} is kept",
        )
        return chosen(kept, "config", f"the micro-batch probe runs on one GPU only: configured split {where}")
    import torch

    log("info", f"Auto micro-batch: probing which divisor of {step_rows} rows a step fits in GPU memory")
    started = time.monotonic()
    was_training = model.training
    model.train()
    loss_fn = microbatch.training_loss(fused)
    measure = microbatch.cuda_measure(model, loss_fn, t.max_seq_len, getattr(torch, dtype))
    # the probe's dropout draws must not shift training's random stream: same seed, same run
    with torch.random.fork_rng(devices=[torch.cuda.current_device()]):
        split = microbatch.choose_split(step_rows, t.batch_size, measure, microbatch.cuda_budget())
    model.train(was_training)
    torch.cuda.reset_peak_memory_stats()  # the probe's peak is not training's
    log("info", f"Auto micro-batch ({time.monotonic() - started:.0f} s): {split.describe()}")
    return chosen(split, "probe", f"the micro-batch probe chose {split.micro_batch}: {split.describe()}")


def optimizer_for_run(
    cfg: JobConfig,
    run_root: Path,
    model: Any,
    device: str,
    resuming: bool,
    earlier_plan: RunPlan | None = None,
) -> tuple[str, Source, str]:
    """The optimizer this run uses, where the choice came from, and why.

    The one its first attempt's plan holds (runs started before the plan: optimizer-choice.json), else
    the config's choice. A resumed run must keep its optimizer, because its checkpoint holds that
    optimizer's state. A run resumed from a checkpoint written before the choice was saved keeps the old
    "auto" rule.
    """
    if earlier_plan is not None and earlier_plan.value("optimizer") is not None:
        return str(earlier_plan.value("optimizer")), "resumed", "kept from the first attempt"
    legacy = run_root / LEGACY_OPTIMIZER_FILE
    if earlier_plan is None and legacy.is_file():
        name = str(json.loads(legacy.read_text(encoding="utf-8"))["optimizer"])
        return name, "resumed", f"kept from the first attempt ({LEGACY_OPTIMIZER_FILE})"
    on_gpu = device.startswith("cuda")
    setting = cfg.training.optimizer
    if resuming and setting == "auto":
        name = LEGACY_GPU_OPTIMIZER if on_gpu else "adamw_8bit"
        return name, "resumed", "the checkpoint predates the saved choice: the former auto rule"
    trainable = sum(p.numel() for p in trainable_parameters(model))
    name = resolve_optimizer(setting, on_gpu, trainable)
    if setting != "auto":
        moved = f" ({name} on CPU)" if name != setting else ""
        return name, "config", f"set in config (training.optimizer: {setting}){moved}"
    where = "GPU" if on_gpu else "CPU"
    return name, "default", f"default on {where} for {trainable:,} trainable parameters"


def build_optimizer(cfg: JobConfig, model: Any, device: str, name: str | None = None) -> tuple[Any, str]:
    """The optimizer for the trainable parameters, and its name (`resolve_optimizer` picks for "auto";
    `name`, from `optimizer_for_run`, overrides the config).

    bitsandbytes keeps fp32 state for tensors below `min_8bit_size` (4096 elements), which covers most LoRA
    matrices of small models; min_8bit_size=0 makes the 8-bit optimizers really 8-bit.
    """
    import torch

    params = trainable_parameters(model)
    t = cfg.training
    on_gpu = device.startswith("cuda")
    if name is None:
        name = resolve_optimizer(t.optimizer, on_gpu, sum(p.numel() for p in params))
    if name == "adamw_torch":
        # fused: one multi-tensor kernel set for all tensors on CUDA (same update as the loop, up to rounding)
        fused = on_gpu and all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused), name
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay, min_8bit_size=0), name


def training_arguments(cfg: JobConfig, run_dir: RunDir, device: str, dtype: str, has_eval: bool) -> Any:
    """TrainingArguments from the job config (checkpoints under RUN_DIR/checkpoints, no HF rotation)."""
    from transformers import TrainingArguments

    t = cfg.training
    evaluating = has_eval and t.eval_steps > 0
    return TrainingArguments(
        output_dir=str(run_dir.checkpoints),
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.epochs if t.epochs is not None else 1.0,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=t.warmup,  # a float below 1 is a fraction of the total steps
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=t.eval_steps if evaluating else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # we prune ourselves, counting only complete checkpoints
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        gradient_checkpointing=False,  # the loader already enabled it as configured (non-reentrant)
        use_cpu=not device.startswith("cuda"),
        bf16=device.startswith("cuda") and dtype == "bfloat16",
        fp16=device.startswith("cuda") and dtype == "float16",
        dataloader_num_workers=0,
        dataloader_pin_memory=device.startswith("cuda"),
        # keeps the Trainer's own running loss finite; the callback reports the true per-step losses
        logging_nan_inf_filter=True,
    )
