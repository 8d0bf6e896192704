"""Resolve a run's plan: every speed lever's state and the reason for it, from the config and the device.

Why one place: each lever used to read its own environment variable, so a variable set on the server
silently changed every job and no job recorded what it ran with. Here the levers are decided once from the
JobConfig (`speed:` and `training.torch_compile`), the device and the world size; the setup then amends the
plan with what it measured (the fused loss the model allows, the micro-batch the probe chose, the
optimizer, a compile that fell back) before it is written and reported (`contract.plan`).

Nothing here reads the environment. A benchmark that wants to force a lever passes `overrides`; they land
in the plan with source "override", so they are shown like any other choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.config import JobConfig
from contract.plan import RunPlan, Source
from worker.train.speed.compile import COMPILE_MIN_STEPS, DEFAULT_BACKEND, compile_options, compile_wanted
from worker.train.speed.dequant import TORCH_DEQUANT_BY_DEFAULT
from worker.train.speed.fused_loss import DEFAULT_CHUNK_ROWS
from worker.train.speed.host_tables import HOST_TABLES_ON_CUDA_BY_DEFAULT
from worker.train.speed.offload import OFFLOAD_ON_CUDA_BY_DEFAULT
from worker.train.speed.switches import forced

# The levers a config (or a benchmark override) can set, in the order the plan lists them. "compile" is
# training.torch_compile; the rest are fields of the `speed:` section with the same name.
ON_OFF_LEVERS = ("host_tables", "offload_activations", "offload_prefetch", "altup_sum", "torch_dequant")
LEVER_NAMES = (
    "compile",
    "compile_backend",
    "compile_options",
    "torch_dequant",
    "altup_sum",
    "host_tables",
    "offload_activations",
    "offload_prefetch",
    "fused_loss",
    "fused_loss_chunk_rows",
    "force_torchrun",
)


def _setting(cfg: JobConfig, name: str, overrides: Mapping[str, str]) -> tuple[str, Source, str]:
    """The lever's raw setting, where it came from, and the words for "it was set" ("" for auto)."""
    if name in overrides:
        return str(overrides[name]), "override", f"benchmark override {name}={overrides[name]}"
    if name == "compile":
        value = cfg.training.torch_compile
        return value, "config", f"set in config (training.torch_compile: {value})"
    value = getattr(cfg.speed, name)
    shown = "empty" if value is None else value
    return ("" if value is None else str(value)), "config", f"set in config (speed.{name}: {shown})"


def _on_off(
    plan: RunPlan,
    cfg: JobConfig,
    name: str,
    overrides: Mapping[str, str],
    default: bool,
    why_default: str,
) -> bool:
    """Record an on/off lever: forced by its setting, else `default` for `why_default`."""
    raw, source, set_words = _setting(cfg, name, overrides)
    chosen = forced(raw)
    if chosen is None:
        plan.set(name, default, "default", why_default)
        return default
    plan.set(name, chosen, source, set_words)
    return chosen


def _compile_default_reason(cfg: JobConfig, device: str, world_size: int, on: bool) -> str:
    steps = cfg.training.max_steps
    if on:
        length = "set by epochs" if steps is None else f"{steps} steps"
        return f"default on one CUDA GPU for runs of at least {COMPILE_MIN_STEPS} steps ({length})"
    if not device.startswith("cuda"):
        return "default off on CPU (compiling tiny models costs more than it saves)"
    if world_size > 1:
        return f"default off with {world_size} GPU processes (measured on one GPU only)"
    return f"default off: {steps} steps are too few for compiling to pay off (needs {COMPILE_MIN_STEPS})"


def resolve_plan(
    cfg: JobConfig,
    *,
    device: str,
    world_size: int = 1,
    overrides: Mapping[str, str] | None = None,
    compile_fallback: str | None = None,
) -> RunPlan:
    """The plan for `cfg` on `device` with `world_size` processes, before anything is measured.

    `overrides` (benchmarks only) force levers by name, as a config would. `compile_fallback`, the reason
    compiling could not happen, resolves the plan again with the layers eager (the levers that follow
    compilation follow it back).
    """
    extra = dict(overrides or {})
    unknown = sorted(set(extra) - set(LEVER_NAMES))
    if unknown:
        raise ValueError(f"unknown speed lever(s) {unknown}; known: {', '.join(LEVER_NAMES)}")
    plan = RunPlan(device=device, world_size=world_size, overrides=extra)
    on_cuda = device.startswith("cuda")
    t = cfg.training

    # compile: training.torch_compile (the schema refuses "on" without gradient checkpointing)
    raw, source, set_words = _setting(cfg, "compile", extra)
    if compile_fallback is not None:
        compiled = False
        plan.set("compile", False, "fallback", compile_fallback)
    elif not t.gradient_checkpointing:
        compiled = False
        plan.set("compile", False, "default", "off: only checkpointed decoder layers are compiled")
    else:
        setting = {True: "on", False: "off", None: "auto"}[forced(raw or "auto")]
        compiled = compile_wanted(device, setting, t.max_steps, world_size)
        if setting == "auto":
            why = _compile_default_reason(cfg, device, world_size, compiled)
            plan.set("compile", compiled, "default", why)
        else:
            plan.set("compile", compiled, source, set_words)

    raw, source, set_words = _setting(cfg, "compile_backend", extra)
    if raw in ("", "auto"):
        plan.set("compile_backend", DEFAULT_BACKEND, "default", f"default: {DEFAULT_BACKEND}")
    else:
        plan.set("compile_backend", raw, source, set_words)
    raw, source, set_words = _setting(cfg, "compile_options", extra)
    options = compile_options(raw)
    if options is None:
        plan.set("compile_options", None, "default", "default: the backend's own")
    else:
        plan.set("compile_options", options, source, set_words)

    quantized_4bit = cfg.quantization.method in ("nf4", "fp4")
    if quantized_4bit:
        dequant_default = compiled and TORCH_DEQUANT_BY_DEFAULT
        why = (
            "default where the layers are compiled (the compiler fuses the unpacking)"
            if dequant_default
            else "default off where the layers run eagerly (bitsandbytes' kernels are faster there)"
        )
        _on_off(plan, cfg, "torch_dequant", extra, dequant_default, why)
    else:
        why = f"off: quantization.method {cfg.quantization.method} has no 4-bit layers"
        plan.set("torch_dequant", False, "default", why)

    why = (
        "default where the layers are compiled (fused into the layer)"
        if compiled
        else "default off where the layers run eagerly (four multiply-adds would be slower than the product)"
    )
    _on_off(plan, cfg, "altup_sum", extra, compiled, why)

    host_default = on_cuda and HOST_TABLES_ON_CUDA_BY_DEFAULT
    why = "default on CUDA" if host_default else "default off on CPU (the tables are in host memory already)"
    _on_off(plan, cfg, "host_tables", extra, host_default, why)

    if t.gradient_checkpointing:
        offload_default = on_cuda and OFFLOAD_ON_CUDA_BY_DEFAULT
        why = "default on CUDA" if offload_default else "default off on CPU"
        offloading = _on_off(plan, cfg, "offload_activations", extra, offload_default, why)
    else:
        offloading = False
        plan.set("offload_activations", False, "default", "off: needs training.gradient_checkpointing")
    if offloading:
        _on_off(plan, cfg, "offload_prefetch", extra, True, "default on wherever activations are offloaded")
    else:
        plan.set("offload_prefetch", False, "default", "off: activations are not offloaded")

    # The fused loss's final word needs the loaded model (`record_fused_loss`); until then, the setting.
    raw, source, set_words = _setting(cfg, "fused_loss", extra)
    wanted = forced(raw or "auto")
    if wanted is None:
        why = "default on CUDA when liger-kernel is installed" if on_cuda else "default off on CPU"
        plan.set("fused_loss", on_cuda, "default", why)
    else:
        plan.set("fused_loss", wanted, source, set_words)
    raw, source, set_words = _setting(cfg, "fused_loss_chunk_rows", extra)
    if raw in ("", "auto"):
        why = f"default: {DEFAULT_CHUNK_ROWS} rows"
        plan.set("fused_loss_chunk_rows", DEFAULT_CHUNK_ROWS, "default", why)
    else:
        plan.set("fused_loss_chunk_rows", int(raw), source, set_words)

    raw, source, set_words = _setting(cfg, "force_torchrun", extra)
    if forced(raw or "auto") is True:
        plan.set("force_torchrun", True, source, set_words)
    else:
        plan.set("force_torchrun", False, "default", "default: torchrun only for more than one GPU")
    return plan


def fused_loss_setting(plan: RunPlan) -> str:
    """speed.fused_loss as the plan resolved it: "on", "off", or "auto" (decided with the loaded model)."""
    choice = plan.levers["fused_loss"]
    if choice.source == "default":
        return "auto"
    return "on" if choice.value else "off"


def record_fused_loss(plan: RunPlan, fused: Any, why_not: str | None) -> None:
    """Amend the plan with the loss the loaded model gets (`fused`: a FusedLoss or None)."""
    previous = plan.levers["fused_loss"]
    if fused is not None:
        source: Source = previous.source if previous.source != "default" else "default"
        plan.set("fused_loss", fused.impl, source, f"{previous.reason}: {fused.reason}")
    elif previous.value:
        plan.set("fused_loss", False, "fallback", why_not or "the model's own loss")


def record_compile_fallback(plan: RunPlan, reason: str) -> None:
    """Say that compiling was planned but the layers ran eagerly, and why."""
    plan.set("compile", False, "fallback", reason)


def record_micro_batch(plan: RunPlan, split: Any, source: Source, reason: str) -> None:
    """Record the micro-batch × accumulation split training uses (a microbatch.Split).

    Only a split the probe measured (it has a budget) is kept as `plan.micro_batch` for a resumed attempt:
    a configured split is the config's to give again.
    """
    from dataclasses import asdict

    plan.micro_batch = asdict(split) if split.budget_bytes else None
    plan.set("micro_batch", f"{split.micro_batch} × {split.grad_accum}", source, reason)


def record_optimizer(plan: RunPlan, name: str, source: Source, reason: str) -> None:
    """Record the optimizer training uses."""
    plan.set("optimizer", name, source, reason)
