"""One training run, end to end: config → preflight → quantized model + LoRA → HF Trainer → adapter.

`run_training(run_dir)` is what `python -m worker.train RUN_DIR` runs (the app's launchers); it reports
through events and always finishes by writing RUN_DIR/outcome.json and returning an ExitCode.
`run_standalone(config_path)` is `tuneboard train CONFIG`: no app, a progress bar on stderr.

A run directory that already holds a complete checkpoint is resumed from it (same step numbering), which is
how the app resumes a job: it relaunches the same RUN_DIR.

How the run computes (every speed lever, the optimizer, the micro-batch split) is resolved once into the run
plan (worker/train/speed/plan.py, contract/plan.py): written to RUN_DIR/plan.json before training, reported
as one `plan` event, copied to the adapter folder, and read back by a resumed attempt. Environment
variables do not change it.

Test hooks (fault injection for tests/faults and tests/worker, never a lever): the environment variable
TUNEBOARD_INJECT_NAN_AT_STEP=N (or "N,M,...") multiplies the training
loss of optimizer step N by NaN, to exercise the divergence guard; TUNEBOARD_INJECT_OOM_AT_STEP=N raises
torch.cuda.OutOfMemoryError in optimizer step N, to exercise the out-of-memory path on a machine without a
GPU; TUNEBOARD_INJECT_STEP_SLEEP_S=0.2 sleeps that long in every step, so a tiny run lasts long enough
for a test to restart the app around it. Never set them for real runs.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.advice import oom_advice
from contract.config import ConfigError, JobConfig, config_to_dict, load_config_file, resolve_optimizer
from contract.plan import RunPlan, Source, read_plan, write_plan
from contract.protocol import EventKind, ExitCode
from contract.rundir import RunDir, last_complete_checkpoint
from worker.train.data import TOKENS_KEY, batch_tokens
from worker.train.distributed import (
    NullReporter,
    follower_exit_code,
    init_process_group,
    install_rank_signals,
    rank_callbacks,
    rank_info,
)
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest

INJECT_NAN_ENV = "TUNEBOARD_INJECT_NAN_AT_STEP"
INJECT_OOM_ENV = "TUNEBOARD_INJECT_OOM_AT_STEP"
INJECT_STEP_SLEEP_ENV = "TUNEBOARD_INJECT_STEP_SLEEP_S"
LOW_DISK_BYTES = 16 * 1024**2  # a failed save with less free space than this was a full disk
REFERENCE_LOGITS = "reference_logits.safetensors"
ADAPTER_PLAN = "tuneboard_plan.json"  # the run plan, copied next to the adapter it describes
LEGACY_PREFLIGHT_FILE = "preflight.json"  # before the run plan; read only, for runs started then
NUM_DEFAULT_SAMPLES = 3
COMPILED_PAD_MULTIPLE = 128  # batch widths when the layers are compiled (worker.train.speed.compile)


class RunStopped(Exception):
    """A run ends early with a known exit code and a plain-words reason."""

    def __init__(self, code: ExitCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Outcome:
    """What outcome.json says."""

    code: ExitCode
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """succeeded | failed | cancelled."""
        if self.code == ExitCode.SUCCEEDED:
            return "succeeded"
        if self.code == ExitCode.CANCELLED:
            return "cancelled"
        return "failed"


def write_outcome(run_dir: RunDir, outcome: Outcome) -> None:
    """Write outcome.json atomically (the supervisor reads it after exit)."""
    body = {
        "status": outcome.status,
        "reason": outcome.reason,
        "exit_code": int(outcome.code),
        **outcome.extra,
    }
    tmp = run_dir.outcome.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2), encoding="utf-8")
    os.replace(tmp, run_dir.outcome)


def read_job(run_dir: RunDir) -> dict[str, Any] | None:
    """RUN_DIR/job.json ({"job_id", "app_url", "token"}) or None for a standalone run."""
    if not run_dir.job.is_file():
        return None
    data = json.loads(run_dir.job.read_text(encoding="utf-8"))
    missing = [k for k in ("job_id", "app_url", "token") if k not in data]
    if missing:
        raise RunStopped(
            ExitCode.CONFIG_ERROR, f"{run_dir.job.name} lacks {missing}; the launcher must write them"
        )
    return dict(data)


def pick_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _nan_steps() -> set[int]:
    return _env_steps(INJECT_NAN_ENV)


def _env_steps(name: str) -> set[int]:
    raw = os.environ.get(name, "").strip()
    return {int(x) for x in raw.split(",") if x.strip().isdigit()}


# ---------------------------------------------------------------------------------------------- trainer


def trainable_parameters(model: Any) -> list[Any]:
    """The tensors of `model` that train (for LoRA: the adapters), in `model.parameters()` order."""
    return [p for p in model.parameters() if p.requires_grad]


def _trainer_class() -> type:
    """A Trainer that records per-step losses, token counts and the pre-clip gradient norm."""
    from transformers import Trainer

    class TuneboardTrainer(Trainer):
        """HF Trainer plus the measurements our callback needs (and the NaN-injection test hook)."""

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
            self.nan_steps = _nan_steps()
            self.oom_steps = _env_steps(INJECT_OOM_ENV)
            self.step_sleep = float(os.environ.get(INJECT_STEP_SLEEP_ENV) or 0)
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
                import torch

                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB "
                    f"(injected by {INJECT_OOM_ENV} at step {self.state.global_step + 1})"
                )
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


def _probe_micro_batch(
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


LEGACY_OPTIMIZER_FILE = "optimizer-choice.json"  # before the run plan; read only, for runs started then
# What "auto" meant on a GPU before fused AdamW became its choice for small adapters: a run resumed from a
# checkpoint of that time must load its 8-bit optimizer state into the same optimizer.
LEGACY_GPU_OPTIMIZER = "paged_adamw_8bit"


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


# ---------------------------------------------------------------------------------------------- samples


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


# ---------------------------------------------------------------------------------------------- the run


def _preflight(
    cfg: JobConfig, run_dir: RunDir, reporter: Reporter, report: Any, earlier_plan: RunPlan | None
) -> Any:
    """Run preflight, or reuse the result an earlier attempt of this run recorded in its plan (resume).

    Runs started before the plan kept it in preflight.json, which is still read for them.
    """
    from worker.train.preflight import PreflightResult, run_preflight

    data: dict[str, Any] | None = None
    if earlier_plan is not None:
        data = earlier_plan.preflight
    elif (run_dir.root / LEGACY_PREFLIGHT_FILE).is_file():
        data = json.loads((run_dir.root / LEGACY_PREFLIGHT_FILE).read_text(encoding="utf-8"))
    if data is not None:
        reporter.emit(
            EventKind.LOG, 0, {"level": "info", "message": "Reusing this run's earlier preflight result."}
        )
        return PreflightResult(**data)
    return run_preflight(cfg, report=report)


def preflight_record(result: Any) -> dict[str, Any] | None:
    """What the plan keeps of a preflight result for a resumed attempt (a failed one is not kept)."""
    if not result.ok:
        return None
    return {
        "ok": result.ok,
        "summary": result.summary,
        "kept_in_full_precision": list(result.kept_in_full_precision),
        "notes": list(result.notes),
        "extra_keep": list(result.extra_keep),
        "seconds": result.seconds,
    }


def _publish_plan(run_dir: RunDir, reporter: Reporter, plan: RunPlan, step: int = 0) -> None:
    """Write the plan to RUN_DIR/plan.json and report it as one `plan` event (rank 0 only writes)."""
    if not rank_info().is_main:
        return
    write_plan(run_dir.plan, plan)
    reporter.emit(EventKind.PLAN, step, plan.to_dict())


def _check_stop(stop: StopRequest) -> None:
    if stop.is_set():
        raise RunStopped(ExitCode.CANCELLED, f"cancelled before training started ({stop.reason})")


def _train(
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    stop: StopRequest,
    *,
    resume: bool,
    progress_bar: bool,
) -> Outcome:
    from worker.train.data import PadCollator, detect_format, load_rows, prepare_data, validate_rows

    def report(kind: str, payload: dict[str, Any]) -> None:
        reporter.emit(EventKind(kind), 0, payload)

    # The data is checked before any model work, so a bad file fails in seconds.
    rows = load_rows(cfg)
    validate_rows(rows, cfg.dataset.format if cfg.dataset.format != "auto" else detect_format(rows[0]))
    _check_stop(stop)
    # Heavy imports only once the data is known to be usable.
    from worker.train.callbacks import STATE_FILE, StepStats, TuneboardCallback, remove_incomplete_checkpoints
    from worker.train.loading import load_for_training
    from worker.train.speed.plan import (
        fused_loss_setting,
        record_compile_fallback,
        record_fused_loss,
        record_optimizer,
        resolve_plan,
    )

    # A relaunch of this run keeps its first attempt's choices (preflight, optimizer, micro-batch).
    earlier_plan = read_plan(run_dir.plan) if resume else None
    pre = _preflight(cfg, run_dir, reporter, report, earlier_plan)
    if not pre.ok:
        raise RunStopped(ExitCode.QUANTIZATION_INCOMPATIBLE, pre.summary)
    _check_stop(stop)

    device = pick_device()
    if rank_info().distributed:  # torchrun: one process per GPU (worker/train/distributed.py)
        device = init_process_group(device)
    from transformers import set_seed

    set_seed(cfg.training.seed)
    plan = resolve_plan(cfg, device=device, world_size=rank_info().world_size)
    plan.preflight = preflight_record(pre)
    loaded = load_for_training(cfg, device=device, report=report, extra_keep=tuple(pre.extra_keep), plan=plan)
    plan = loaded.plan or plan
    model, tokenizer = loaded.model, loaded.tokenizer
    _report_load_memory(device, report)
    prepared = prepare_data(cfg, tokenizer)
    if prepared.num_truncated:
        reporter.emit(
            EventKind.LOG,
            0,
            {
                "level": "warning",
                "message": (
                    f"{prepared.num_truncated} example(s) were longer than training.max_seq_len="
                    f"{cfg.training.max_seq_len} tokens and were truncated."
                ),
            },
        )
    if cfg.training.packing:
        message = (
            f"Packed {len(prepared.train_rows)} training examples into {len(prepared.train)} rows of at most "
            f"{cfg.training.max_seq_len} tokens; each example attends only to itself."
        )
        report("log", {"level": "info", "message": message})
    _check_stop(stop)

    ckpt = last_complete_checkpoint(run_dir) if resume else None
    removed = remove_incomplete_checkpoints(run_dir)
    if removed:
        reporter.emit(
            EventKind.LOG,
            0,
            {
                "level": "warning",
                "message": (
                    f"Removed {len(removed)} incomplete checkpoint(s) left by an interrupted save: "
                    + ", ".join(p.name for p in removed)
                ),
            },
        )

    stats = StepStats()
    callback = TuneboardCallback(
        cfg=cfg,
        run_dir=run_dir,
        reporter=reporter,
        stats=stats,
        stop=stop,
        sampler=make_sampler(cfg, tokenizer, prepared, device),
        progress_bar=progress_bar,
    )
    if ckpt is not None and (ckpt / STATE_FILE).is_file():
        callback.load_state_dict(json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")))
    chosen, opt_source, opt_reason = optimizer_for_run(
        cfg, run_dir.root, model, device, resuming=ckpt is not None, earlier_plan=earlier_plan
    )
    optimizer, opt_name = build_optimizer(cfg, model, device, chosen)
    record_optimizer(plan, opt_name, opt_source, opt_reason)
    from worker.train.speed.fused_loss import liger_available, plan_fused_loss, unsupported_reason

    distributed = rank_info().distributed
    fused = plan_fused_loss(
        model,
        device,
        distributed=distributed,
        setting=fused_loss_setting(plan),
        chunk_rows=plan.value("fused_loss_chunk_rows"),
    )
    if fused is None and plan.value("fused_loss"):
        why_not = (
            "off with several GPU processes (the fused path would bypass DDP's gradient sync)"
            if distributed
            else unsupported_reason(model)
            or ("liger-kernel is not installed" if not liger_available() else "the model's own loss")
        )
        record_fused_loss(plan, None, why_not)
    else:
        record_fused_loss(plan, fused, None)
    if fused is not None:
        message = f"Loss: {fused.reason} (the full logits are never stored)"
        reporter.emit(EventKind.LOG, 0, {"level": "info", "message": message})
    args = training_arguments(cfg, run_dir, device, loaded.dtype, has_eval=bool(prepared.eval))
    if rank_info().distributed:
        args.ddp_find_unused_parameters = False  # every LoRA matrix gets a gradient every step
    if cfg.training.probes_micro_batch(one_gpu=device.startswith("cuda") and not rank_info().distributed):
        split = _probe_micro_batch(
            cfg, run_dir, model, fused, device, loaded.dtype, report, ckpt is not None, earlier_plan, plan
        )
        args.per_device_train_batch_size = split.micro_batch
        args.gradient_accumulation_steps = split.grad_accum
    else:
        t = cfg.training
        why = f"set in config (training.batch_size {t.batch_size} × training.grad_accum {t.grad_accum})"
        plan.set("micro_batch", f"{t.batch_size} × {t.grad_accum}", "config", why)
    _publish_plan(run_dir, reporter, plan)
    per_step_rows = args.per_device_train_batch_size * max(1, rank_info().world_size)
    drop_last_train = loaded.compiler is not None and len(prepared.train) >= per_step_rows
    if drop_last_train and len(prepared.train) % per_step_rows:
        skipped = len(prepared.train) % per_step_rows
        message = (
            f"With compiled layers every batch has the same shape: the last {skipped} training row(s) of "
            "each shuffled epoch are skipped (a different few each epoch)"
        )
        reporter.emit(EventKind.LOG, 0, {"level": "info", "message": message})
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval or None,
        data_collator=PadCollator(
            tokenizer.pad_token_id,
            multiple_of=COMPILED_PAD_MULTIPLE if loaded.compiler is not None else 1,
            max_width=cfg.training.max_seq_len,
        ),
        processing_class=tokenizer,
        optimizers=(optimizer, None),
        callbacks=[*(rank_callbacks(callback, stats, stop) if rank_info().distributed else []), callback],
        step_stats=stats,
        fused_loss=fused,
        drop_last_train=drop_last_train,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our events and progress bar replace its stdout dicts
    reporter.emit(
        EventKind.LOG,
        0,
        {
            "level": "info",
            "message": (
                f"Training on {device} with {opt_name}: {len(prepared.train)} train / "
                f"{len(prepared.eval)} eval rows "
                f"({prepared.format}), {loaded.num_trainable_params:,} trainable parameters"
                + (f"; resuming from {ckpt.name}" if ckpt is not None else "")
            ),
        },
    )
    started = time.monotonic()
    trained_out = _trained_out(ckpt, cfg)
    if ckpt is not None and trained_out:
        # The Trainer takes a step before it asks whether max_steps is reached: resumed from the run's
        # last checkpoint it would train step max_steps + 1. Nothing is left to train; the adapter is.
        _load_final_checkpoint(trainer, ckpt)
        reporter.emit(
            EventKind.STATUS,
            trainer.state.global_step,
            {"status": "running", "total_steps": int(trainer.state.max_steps)},
        )
        message = f"{ckpt.name} is the run's last step: nothing left to train; saving the adapter from it"
        reporter.emit(EventKind.LOG, trainer.state.global_step, {"level": "info", "message": message})
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    seconds = time.monotonic() - started
    if loaded.compiler is not None and not trained_out:
        # Reported apart from the speed: the first steps' time includes compiling (forward calls timed).
        level = "info"
        message = (
            f"torch.compile: {loaded.compiler.graphs} graph(s) compiled in forward calls taking "
            f"{loaded.compiler.compile_s:.0f} s (the backward graphs compile during the first backward)"
        )
        if loaded.compiler.graphs == 0 and trainer.state.global_step > 0:
            level = "warning"
            message = (
                "torch.compile could not compile the decoder layers here, so they ran eagerly (the reason is "
                "in the worker's stderr log); set training.torch_compile to off to skip the attempt"
            )
            record_compile_fallback(plan, "compile failed: the layers ran eagerly (see stderr.log)")
            _publish_plan(run_dir, reporter, plan, step=trainer.state.global_step)
        reporter.emit(EventKind.LOG, trainer.state.global_step, {"level": level, "message": message})

    step = trainer.state.global_step
    if callback.diverged is not None:
        last = last_complete_checkpoint(run_dir)
        keep = f"; the last good checkpoint is checkpoints/{last.name}" if last else ""
        return Outcome(ExitCode.DIVERGED, f"training diverged: {callback.diverged.reason}{keep}")
    if callback.cancelled:
        last = last_complete_checkpoint(run_dir)
        where = f"; checkpoint saved at checkpoints/{last.name}" if last else ""
        return Outcome(ExitCode.CANCELLED, f"{stop.reason or 'cancelled'} at step {step}{where}")

    if prepared.eval and callback.last_eval_step != step:
        trainer.evaluate()  # final numbers for the model card (eval_steps 0 means: only here)
    return _finish(cfg, run_dir, reporter, trainer, loaded, prepared, pre, callback, seconds, device, plan)


def _trained_out(ckpt: Path | None, cfg: JobConfig) -> bool:
    """Whether `ckpt` already holds training.max_steps steps (a run stopped after its last checkpoint)."""
    if ckpt is None or cfg.training.max_steps is None:
        return False  # an epoch-based run ends on an epoch boundary, where the Trainer's loop is empty
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    return state.global_step >= cfg.training.max_steps


def _load_final_checkpoint(trainer: Any, ckpt: Path) -> None:
    """Load the checkpoint's adapter weights into the model and its state into the trainer; no training."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_peft_weights(str(ckpt), device=str(trainer.args.device)))
    trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))


def _report_load_memory(device: str, report: Callable[[str, dict[str, Any]], None]) -> None:
    """Say what loading took on the GPU, then restart the peak so `vram_peak_gb` is the training's own.

    Loading peaks higher than training needs: the weights arrive on the GPU before the per-layer table is
    moved to CPU memory (worker/train/speed/host_tables.py) — 6.2 GB at load vs 2.1 GB after on Gemma 3n
    E2B dims.
    """
    if not device.startswith("cuda"):
        return
    import torch

    now, peak = torch.cuda.memory_allocated() / 1024**3, torch.cuda.max_memory_allocated() / 1024**3
    message = f"GPU memory after loading {now:.2f} GB (peak while loading {peak:.2f} GB)"
    report("log", {"level": "info", "message": message})
    torch.cuda.reset_peak_memory_stats()


def _finish(
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    trainer: Any,
    loaded: Any,
    prepared: Any,
    pre: Any,
    callback: Any,
    seconds: float,
    device: str,
    plan: RunPlan | None = None,
) -> Outcome:
    """Save the adapter, tokenizer, reference logits, config, plan and model card; emit the ARTIFACT event."""
    if not rank_info().is_main:
        return Outcome(ExitCode.SUCCEEDED, "done; rank 0 saves the adapter")
    import torch
    from safetensors.torch import save_file

    from worker.train.model_card import write_model_card

    out = run_dir.adapter
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))

    # Logits for a fixed input, so anyone can check the adapter reloads to the same model.
    example = (prepared.eval or prepared.train)[0]
    ids = torch.tensor([example["input_ids"]], device=device)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().cpu()
    save_file({"input_ids": ids.cpu(), "logits": logits.contiguous()}, str(out / REFERENCE_LOGITS))

    (out / "tuneboard_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2), encoding="utf-8")
    if plan is not None:  # how these weights were computed travels with them
        write_plan(out / ADAPTER_PLAN, plan)
    (out / "tuneboard_quantization.json").write_text(
        json.dumps(
            {
                "method": cfg.quantization.method,
                "double_quant": cfg.quantization.double_quant,
                "llm_int8_skip_modules": list(loaded.kept_in_full_precision),
                "dtype": loaded.dtype,
                "base_model": loaded.source,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    metrics = {
        k: v for k, v in callback.last_metrics.items() if k in ("loss", "eval_loss", "grad_norm", "epoch")
    }
    metrics["steps"] = trainer.state.global_step
    metrics["train_seconds"] = round(seconds, 1)
    write_model_card(
        out / "README.md",
        cfg=cfg,
        base_model=loaded.source,
        dataset_fingerprint=prepared.fingerprint,
        dataset_format=prepared.format,
        num_train_rows=len(prepared.train_rows),
        num_eval_rows=len(prepared.eval_rows),
        metrics=metrics,
        preflight_notes=list(dict.fromkeys([pre.summary, *pre.notes, *loaded.notes])),
        kept_in_full_precision=loaded.kept_in_full_precision,
        command="tuneboard train tuneboard_config.json",
    )
    reporter.emit(EventKind.ARTIFACT, trainer.state.global_step, {"name": "adapter", "path": "adapter"})
    return Outcome(
        ExitCode.SUCCEEDED,
        f"trained {trainer.state.global_step} steps in {seconds:.0f} s; adapter saved in adapter/",
        {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}},
    )


def _oom_advice(cfg: JobConfig, on_gpu: bool = True) -> str:
    t = cfg.training
    tips = [f"lower training.batch_size (now {t.batch_size}) and raise training.grad_accum to keep the batch"]
    tips.append(f"lower training.max_seq_len (now {t.max_seq_len})")
    if not t.gradient_checkpointing:
        tips.append("turn on training.gradient_checkpointing")
    if cfg.quantization.method == "none":
        tips.append("use quantization.method nf4")
    what = "out of GPU memory" if on_gpu else "out of memory (host RAM)"
    return f"{what}: " + "; or ".join(tips)


def run_training(run_dir: Path, *, resume: bool = True, progress_bar: bool = False) -> ExitCode:
    """Run the job in RUN_DIR (config.json, maybe job.json); always writes outcome.json; returns its code."""
    rd = RunDir(Path(run_dir))
    rd.root.mkdir(parents=True, exist_ok=True)
    if rd.outcome.exists():
        rd.outcome.unlink()  # a relaunch (resume): the old outcome no longer describes this attempt
    try:
        job = read_job(rd)
    except (RunStopped, json.JSONDecodeError, OSError) as exc:
        reason = exc.reason if isinstance(exc, RunStopped) else f"cannot read {rd.job.name}: {exc}"
        outcome = Outcome(ExitCode.CONFIG_ERROR, reason)
        write_outcome(rd, outcome)
        return outcome.code
    rank = rank_info()
    # under torchrun only rank 0 reports and writes; the other ranks stay silent
    reporter: Any = Reporter(rd, job) if rank.is_main else NullReporter()
    stop = StopRequest(rd.control, reporter.cancel_requested)
    try:
        stop.install()
    except ValueError:  # not the main thread (an in-process caller): signals stay theirs
        pass
    if rank.distributed:
        install_rank_signals(stop)
    outcome = _run_guarded(rd, reporter, stop, resume=resume, progress_bar=progress_bar)
    level = "info" if outcome.code == ExitCode.SUCCEEDED else "error"
    final_step = getattr(reporter, "last_step", 0)  # NullReporter (other ranks) has none
    message = f"{outcome.status}: {outcome.reason}"
    reporter.emit(EventKind.LOG, final_step, {"level": level, "message": message})
    reporter.close(timeout=10.0)
    if not rank.is_main:
        return follower_exit_code(outcome.code)
    outcome = with_delivery_problem(outcome, reporter.delivery_problem())
    try:
        write_outcome(rd, outcome)  # last: its presence means the worker finished on its own terms
    except OSError as exc:  # RUN_DIR gone for good: the exit code and this line still tell the app
        print(f"{outcome.status}: {outcome.reason} (outcome.json not written: {exc})", file=sys.stderr)
    return outcome.code


def with_delivery_problem(outcome: Outcome, problem: str | None) -> Outcome:
    """A run whose events did not all reach the app does not succeed in silence: it fails, saying so."""
    if problem is None:
        return outcome
    print(f"tuneboard: {problem}", file=sys.stderr)
    if outcome.code == ExitCode.SUCCEEDED:
        return Outcome(ExitCode.FAILED, f"{problem} (training itself finished: {outcome.reason})")
    return Outcome(outcome.code, f"{outcome.reason}; also {problem}", outcome.extra)


def _run_guarded(
    rd: RunDir, reporter: Reporter, stop: StopRequest, *, resume: bool, progress_bar: bool
) -> Outcome:
    from worker.train.data import DatasetError

    cfg: JobConfig | None = None
    try:
        cfg = load_config_file(rd.config)
        return _train(cfg, rd, reporter, stop, resume=resume, progress_bar=progress_bar)
    except ConfigError as exc:
        return Outcome(ExitCode.CONFIG_ERROR, str(exc), {"problems": exc.problems})
    except DatasetError as exc:
        return Outcome(
            ExitCode.CONFIG_ERROR, f"dataset problem: {exc}", {"problems": {"dataset.source": str(exc)}}
        )
    except RunStopped as exc:
        return Outcome(exc.code, exc.reason)
    except Exception as exc:  # classified below; the traceback goes to stderr for the supervisor's tail
        # a full disk first gets back the space a half-written checkpoint took, or the traceback, the
        # events and outcome.json below could not be written either
        full = _disk_full_outcome(rd) if _is_disk_full(exc, rd) else None
        try:
            traceback.print_exc(file=sys.stderr)
        except OSError:
            pass
        return full or _classify(exc, cfg)


def _is_disk_full(exc: BaseException, rd: RunDir) -> bool:
    """True when `exc` or one behind it is ENOSPC/EDQUOT, or a checkpoint save failed on a full disk.

    torch.save reports a full disk as a bare RuntimeError ("unexpected pos ..."), with no errno to go
    by; a half-written checkpoint plus (almost) no space left on its filesystem says the same.
    """
    if _incomplete_checkpoint_on_a_full_disk(rd):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _incomplete_checkpoint_on_a_full_disk(rd: RunDir) -> bool:
    from contract.rundir import CHECKPOINT_COMPLETE_MARKER

    try:
        torn = [
            p
            for p in rd.checkpoints.iterdir()
            if p.name.startswith("checkpoint-") and not (p / CHECKPOINT_COMPLETE_MARKER).exists()
        ]
        return bool(torn) and shutil.disk_usage(rd.checkpoints).free < LOW_DISK_BYTES
    except OSError:
        return False


def _disk_full_outcome(rd: RunDir) -> Outcome:
    """Remove the checkpoint the full disk interrupted (it is never resumable) and say what to do."""
    from worker.train.callbacks import remove_incomplete_checkpoints

    removed = sorted(remove_incomplete_checkpoints(rd), key=lambda p: p.name)
    last = last_complete_checkpoint(rd)
    kept = (
        f"; the earlier complete checkpoint checkpoints/{last.name} is intact and resume continues from it"
        if last is not None
        else "; no complete checkpoint exists yet, so resume starts over"
    )
    advice = "free disk space or lower training.save_total_limit, then resume"
    if removed:
        where = f"while saving checkpoint {removed[-1].name} in {rd.checkpoints}"
    else:
        where = f"while writing to {rd.root}"
    return Outcome(ExitCode.FAILED, f"no space left on device {where}: {advice}{kept}")


def _classify(exc: Exception, cfg: JobConfig | None) -> Outcome:
    import torch

    from worker.train.loading import ModelLoadError, QuantizationIncompatibleError

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        on_gpu = isinstance(exc, torch.cuda.OutOfMemoryError) or "cuda" in str(exc).lower()
        fallback = "out of GPU memory" if on_gpu else "out of memory (host RAM)"
        return Outcome(ExitCode.OUT_OF_MEMORY, oom_advice(cfg, on_gpu=on_gpu) if cfg else fallback)
    if isinstance(exc, QuantizationIncompatibleError):
        return Outcome(ExitCode.QUANTIZATION_INCOMPATIBLE, str(exc))
    if isinstance(exc, ModelLoadError):
        extra = {"problems": {exc.field: str(exc)}} if exc.field else {}
        return Outcome(ExitCode.CONFIG_ERROR, str(exc), extra)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Outcome(
        ExitCode.FAILED, f"unexpected error: {type(exc).__name__}: {first} (see stderr.log for the traceback)"
    )


def default_run_dir(config_path: Path, cfg: JobConfig) -> Path:
    """./tuneboard-runs/<config stem>-<UTC timestamp> for standalone runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("tuneboard-runs") / f"{config_path.stem}-{stamp}"


def run_standalone(config_path: Path, run_dir: Path | None = None, resume: bool = False) -> int:
    """`tuneboard train CONFIG`: train in the foreground with a progress bar, then print the adapter path."""
    config_path = Path(config_path)
    try:
        cfg = load_config_file(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    rd = RunDir(Path(run_dir) if run_dir is not None else default_run_dir(config_path, cfg))
    if not resume and last_complete_checkpoint(rd) is not None:
        print(
            f"error: {rd.root} already holds checkpoints from an earlier run; pass --resume to continue it "
            "or choose another run directory",
            file=sys.stderr,
        )
        return int(ExitCode.CONFIG_ERROR)
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.config.write_text(json.dumps(config_to_dict(cfg), indent=2), encoding="utf-8")
    if rd.outcome.exists():
        rd.outcome.unlink()
    print(f"run directory: {rd.root}", file=sys.stderr)
    code = run_training(rd.root, resume=resume, progress_bar=True)
    outcome = json.loads(rd.outcome.read_text(encoding="utf-8"))
    if code == ExitCode.SUCCEEDED:
        print(f"adapter saved to {rd.adapter}")
    else:
        print(f"{outcome['status']}: {outcome['reason']}", file=sys.stderr)
        print(
            f"events: {rd.events}  (re-run with --resume --run-dir {shlex.quote(str(rd.root))} to continue)"
            if last_complete_checkpoint(rd)
            else f"events: {rd.events}",
            file=sys.stderr,
        )
    return int(code)
