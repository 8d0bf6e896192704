"""One run's training, stage by stage: data → preflight → plan → quantized model + LoRA → Trainer → adapter.

`train_job` is what worker/train/run.py runs once the config loaded; it returns the run's Outcome or raises
(run.py classifies what it raises). The data is checked before any model work, so a bad file fails in
seconds; a stop request between stages ends the run before training with nothing to save.

A run directory that already holds a complete checkpoint is resumed from it (same step numbering), which is
how the app resumes a job: it relaunches the same RUN_DIR. How the run computes (every speed lever, the
optimizer, the micro-batch split) is resolved once into the run plan (worker/train/speed/plan.py,
contract/plan.py): written to RUN_DIR/plan.json before training, reported as one `plan` event, copied to the
adapter folder, and read back by a resumed attempt. Environment variables do not change it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from contract.config import JobConfig
from contract.plan import RunPlan, read_plan, write_plan
from contract.protocol import EventKind, ExitCode
from contract.rundir import RunDir, last_complete_checkpoint
from worker.train.distributed import init_process_group, rank_callbacks, rank_info
from worker.train.log import Level, say
from worker.train.outcome import Outcome, RunStopped
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest
from worker.train.trainer import (
    COMPILED_PAD_MULTIPLE,
    build_optimizer,
    optimizer_for_run,
    probe_micro_batch,
    trainer_class,
    training_arguments,
)

LEGACY_PREFLIGHT_FILE = "preflight.json"  # before the run plan; read only, for runs started then


def pick_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reuse_or_run_preflight(
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
        say("Reusing this run's earlier preflight result.", reporter=reporter)
        return PreflightResult(**data)
    # the stages before the first metric are said, so the job page shows what the run is doing
    method = cfg.quantization.method
    under = "in full precision" if method == "none" else f"under {method}"
    message = f"Preflight: a tiny twin of {cfg.model.name} trains one step {under} to check the recipe…"
    say(message, reporter=reporter)
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


def publish_plan(run_dir: RunDir, reporter: Reporter, plan: RunPlan, step: int = 0) -> None:
    """Write the plan to RUN_DIR/plan.json and report it as one `plan` event (rank 0 only writes)."""
    if not rank_info().is_main:
        return
    write_plan(run_dir.plan, plan)
    reporter.emit(EventKind.PLAN, step, plan.to_dict())


def _check_stop(stop: StopRequest) -> None:
    """End the run as cancelled when a stop was requested before training started."""
    if stop.is_set():
        raise RunStopped(ExitCode.CANCELLED, f"cancelled before training started ({stop.reason})")


def train_job(
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    stop: StopRequest,
    *,
    resume: bool,
    progress_bar: bool,
) -> Outcome:
    """Train the job `cfg` in `run_dir` (from its last complete checkpoint when `resume`), then finish it.

    The trackers of cfg.report_to get the run's metrics from a background thread (worker/train/trackers/);
    they are ended, failed or finished, however training ends, and none of theirs can fail the run.
    """
    from worker.train.trackers import start_trackers

    trackers = start_trackers(cfg, run_dir, reporter, main_rank=rank_info().is_main)
    outcome: Outcome | None = None
    try:
        outcome = _train_job(cfg, run_dir, reporter, stop, resume=resume, progress_bar=progress_bar)
        return outcome
    finally:
        trackers.close(failed=outcome is None or outcome.code != ExitCode.SUCCEEDED)


def _train_job(
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    stop: StopRequest,
    *,
    resume: bool,
    progress_bar: bool,
) -> Outcome:
    """train_job without the trackers."""
    from worker.train.data import PadCollator, prepare_data
    from worker.train.preference.setup import check_data, is_preference, start_adapter

    def report(kind: str, payload: dict[str, Any]) -> None:
        reporter.emit(EventKind(kind), 0, payload)

    # The data is checked before any model work, so a bad file fails in seconds (and a file that does
    # not fit cfg.method is refused with the method that fits: worker/train/preference/setup.py).
    check_data(cfg)
    preference = is_preference(cfg)
    _check_stop(stop)
    # Heavy imports only once the data is known to be usable.
    from worker.train.callbacks import training_callbacks
    from worker.train.callbacks.checkpoints import STATE_FILE, remove_incomplete_checkpoints
    from worker.train.callbacks.metrics import StepStats
    from worker.train.callbacks.samples import make_sampler
    from worker.train.finish import finish_run, load_final_checkpoint, trained_out
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
    pre = reuse_or_run_preflight(cfg, run_dir, reporter, report, earlier_plan)
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
    quant = "in full precision" if cfg.quantization.method == "none" else f"in {cfg.quantization.method}"
    say(f"Loading {cfg.model.name} {quant} on {device}…", reporter=reporter)
    loaded = load_for_training(cfg, device=device, report=report, extra_keep=tuple(pre.extra_keep), plan=plan)
    plan = loaded.plan or plan
    model, tokenizer = loaded.model, loaded.tokenizer
    report_load_memory(device, report)
    from_adapter = start_adapter(cfg, model, run_dir.root, reporter)
    if preference:
        from worker.train.preference.data import prepare_preference_data

        prepared = prepare_preference_data(cfg, tokenizer)
        if prepared.num_dropped:
            message = (
                f"{prepared.num_dropped} pair(s) whose answers were the same after truncation were left out"
            )
            say(message, "warning", reporter=reporter)
    else:
        prepared = prepare_data(cfg, tokenizer)
    if prepared.num_truncated:
        message = (
            f"{prepared.num_truncated} example(s) were longer than training.max_seq_len="
            f"{cfg.training.max_seq_len} tokens and were truncated."
        )
        say(message, "warning", reporter=reporter)
    if cfg.training.packing and not preference:
        message = (
            f"Packed {len(prepared.train_rows)} training examples into {len(prepared.train)} rows of at most "
            f"{cfg.training.max_seq_len} tokens; each example attends only to itself."
        )
        say(message, reporter=reporter)
    _check_stop(stop)

    ckpt = last_complete_checkpoint(run_dir) if resume else None
    removed = remove_incomplete_checkpoints(run_dir)
    if removed:
        names = ", ".join(p.name for p in removed)
        message = f"Removed {len(removed)} incomplete checkpoint(s) left by an interrupted save: {names}"
        say(message, "warning", reporter=reporter)

    stats = StepStats()
    callbacks = training_callbacks(
        cfg=cfg,
        run_dir=run_dir,
        reporter=reporter,
        stats=stats,
        stop=stop,
        sampler=None if preference else make_sampler(cfg, tokenizer, prepared, device),
        progress_bar=progress_bar,
    )
    if ckpt is not None and (ckpt / STATE_FILE).is_file():
        callbacks.load_state_dict(json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")))
    chosen, opt_source, opt_reason = optimizer_for_run(
        cfg, run_dir.root, model, device, resuming=ckpt is not None, earlier_plan=earlier_plan
    )
    optimizer, opt_name = build_optimizer(cfg, model, device, chosen)
    record_optimizer(plan, opt_name, opt_source, opt_reason)
    from worker.train.speed.fused_loss import liger_available, plan_fused_loss, unsupported_reason

    distributed = rank_info().distributed
    fused = None
    if not preference:  # the preference losses need per-sequence log-probs, not the SFT loss
        fused = plan_fused_loss(
            model,
            device,
            distributed=distributed,
            setting=fused_loss_setting(plan),
            chunk_rows=plan.value("fused_loss_chunk_rows"),
        )
    if preference:
        why = f"method {cfg.method}: its loss needs per-sequence log-probabilities, not the SFT loss"
        plan.set("fused_loss", False, "fallback" if plan.value("fused_loss") else "default", why)
    elif fused is None and plan.value("fused_loss"):
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
        say(f"Loss: {fused.reason} (the full logits are never stored)", reporter=reporter)
    args = training_arguments(cfg, run_dir, device, loaded.dtype, has_eval=bool(prepared.eval))
    if rank_info().distributed:
        args.ddp_find_unused_parameters = False  # every LoRA matrix gets a gradient every step
    # the probe measures SFT rows; a preference row is two sequences (or four with KTO's KL pairs)
    if not preference and cfg.training.probes_micro_batch(
        one_gpu=device.startswith("cuda") and not rank_info().distributed
    ):
        split = probe_micro_batch(
            cfg, run_dir, model, fused, device, loaded.dtype, report, ckpt is not None, earlier_plan, plan
        )
        args.per_device_train_batch_size = split.micro_batch
        args.gradient_accumulation_steps = split.grad_accum
    else:
        t = cfg.training
        why = f"set in config (training.batch_size {t.batch_size} × training.grad_accum {t.grad_accum})"
        plan.set("micro_batch", f"{t.batch_size} × {t.grad_accum}", "config", why)
    publish_plan(run_dir, reporter, plan)
    per_step_rows = args.per_device_train_batch_size * max(1, rank_info().world_size)
    drop_last_train = loaded.compiler is not None and len(prepared.train) >= per_step_rows
    if drop_last_train and len(prepared.train) % per_step_rows:
        skipped = len(prepared.train) % per_step_rows
        message = (
            f"With compiled layers every batch has the same shape: the last {skipped} training row(s) of "
            "each shuffled epoch are skipped (a different few each epoch)"
        )
        say(message, reporter=reporter)
    pad_multiple = COMPILED_PAD_MULTIPLE if loaded.compiler is not None else 1
    collator: Any = PadCollator(
        tokenizer.pad_token_id, multiple_of=pad_multiple, max_width=cfg.training.max_seq_len
    )
    run_trainer, extra = trainer_class(), {}
    if preference:  # DPO / ORPO / KTO as the loss of the same Trainer (worker/train/preference/trainer.py)
        from worker.train.preference.setup import build_parts

        parts = build_parts(
            cfg,
            base_trainer=run_trainer,
            tokenizer=tokenizer,
            data=prepared,
            model=model,
            device=device,
            pad_multiple=pad_multiple,
            callbacks=callbacks,
            from_adapter=from_adapter,
            reporter=reporter,
        )
        run_trainer, collator, extra = parts.trainer_class, parts.collator, parts.trainer_kwargs
        callbacks.samples.sampler = parts.sampler
    trainer = run_trainer(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval or None,
        data_collator=collator,
        processing_class=tokenizer,
        optimizers=(optimizer, None),
        callbacks=[
            *(rank_callbacks(callbacks.stopper, stats, stop) if rank_info().distributed else []),
            *callbacks.in_order(),
        ],
        step_stats=stats,
        fused_loss=fused,
        drop_last_train=drop_last_train,
        **extra,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our events and progress bar replace its stdout dicts
    say(
        f"Training on {device} with {opt_name}: {len(prepared.train)} train / {len(prepared.eval)} eval rows "
        f"({prepared.format}), {loaded.num_trainable_params:,} trainable parameters"
        + (f"; resuming from {ckpt.name}" if ckpt is not None else ""),
        reporter=reporter,
    )
    if loaded.compiler is not None:
        say("Compiling the model's layers: the first steps take longer…", reporter=reporter)
    started = time.monotonic()
    nothing_left = trained_out(ckpt, cfg)
    if ckpt is not None and nothing_left:
        # The Trainer takes a step before it asks whether max_steps is reached: resumed from the run's
        # last checkpoint it would train step max_steps + 1. Nothing is left to train; the adapter is.
        load_final_checkpoint(trainer, ckpt)
        reporter.emit(
            EventKind.STATUS,
            trainer.state.global_step,
            {"status": "running", "total_steps": int(trainer.state.max_steps)},
        )
        message = f"{ckpt.name} is the run's last step: nothing left to train; saving the adapter from it"
        say(message, reporter=reporter, step=trainer.state.global_step)
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    seconds = time.monotonic() - started
    if loaded.compiler is not None and not nothing_left:
        # Reported apart from the speed: the first steps' time includes compiling (forward calls timed).
        level: Level = "info"
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
            publish_plan(run_dir, reporter, plan, step=trainer.state.global_step)
        say(message, level, reporter=reporter, step=trainer.state.global_step)

    step = trainer.state.global_step
    if callbacks.diverged is not None:
        last = last_complete_checkpoint(run_dir)
        keep = f"; the last good checkpoint is checkpoints/{last.name}" if last else ""
        return Outcome(ExitCode.DIVERGED, f"training diverged: {callbacks.diverged.reason}{keep}")
    if callbacks.cancelled:
        last = last_complete_checkpoint(run_dir)
        where = f"; checkpoint saved at checkpoints/{last.name}" if last else ""
        return Outcome(ExitCode.CANCELLED, f"{stop.reason or 'cancelled'} at step {step}{where}")

    if prepared.eval and callbacks.last_eval_step != step:
        trainer.evaluate()  # final numbers for the model card (eval_steps 0 means: only here)
    return finish_run(
        cfg, run_dir, reporter, trainer, loaded, prepared, pre, callbacks.last_metrics, seconds, device, plan
    )


def report_load_memory(device: str, report: Callable[[str, dict[str, Any]], None]) -> None:
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
