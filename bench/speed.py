"""Seed recipe vs Tuneboard's training path on one GPU: tokens/s, VRAM, MFU and a loss-curve check.

    python -m bench.speed --model e2b --seq 512 --recipes seed,tb-compile \\
        --phases 4x4:50 --tb-phases 16x1:50 --work bench-work/speed

(those are the defaults: `tuneboard bench --model e2b --seq 512 --work bench-work/speed` runs the same).

Each recipe runs in its own process (so peak-memory numbers are its own) on the same saved model and the
same token batches, in a plain torch loop (forward, backward, clip 1.0, optimizer step), LoRA r16 alpha 32 on
the attention and MLP projections, lr 2e-4, bf16 autocast:

- seed: nf4 + double quant, skip list [altup, lm_head], `prepare_model_for_kbit_training` (fp32 upcast of
  every non-quantized weight), eager attention, HF gradient checkpointing, PagedAdamW8bit, the model's loss;
- tuneboard: the worker's own loader (`load_for_training`: no upcast, the recipe's attention, non-reentrant
  checkpointing), the worker's optimizer (`build_optimizer`) and its fused linear cross-entropy
  (`worker.train.speed.fused_loss`); `tb-nofused` is the same with the model's own loss; `tb-offload` and
  `tb-nooffload` are the same with CPU offload of the checkpointed layer inputs forced on / off
  (`worker.train.speed.offload`; `tuneboard` itself takes the worker's default); `tb-offload-lazy` offloads
  without the backward prefetch; `tb-compile` / `tb-nocompile` force the compiled decoder layers
  (`worker.train.speed.compile`) on / off (`tuneboard` runs eager: the benchmark's config has fewer steps than
  "auto" compiles for); `tb-nohost` keeps the big frozen lookup tables on the GPU
  (`worker.train.speed.host_tables`, on by default on CUDA); `tb-inputgrads` is `tb-compile` with the input
  embeddings' output requiring a gradient, as the loader did before (autograd then also records the frozen
  work before the first decoder layer); `tb-cudagraphs` and `tb-cppwrapper` are `tb-compile` with inductor's
  CUDA graphs or its C++ launcher (`speed.compile_options`), which cut the host's time per kernel launch;
  `tb-altup-bmm` is `tb-compile` with transformers' own AltUp prediction (`worker.train.speed.altup` off);
  `tb-torchdequant` / `tb-bnbdequant` are `tb-compile` with the 4-bit weights unpacked by PyTorch ops
  (`worker.train.speed.dequant`, the default where layers are compiled) / by bitsandbytes' own op; `tb-combo`
  is `tb-compile` with inductor's horizontal fusion of independent kernels (`combo_kernels`).
  `tb-8bitadam` is `tb-compile` with the seed's optimizer (PagedAdamW8bit), so the fall gate compares
  gradients rather than optimizers; `tb-badscale` is `tuneboard` with every LoRA scale ×4 (broken on
  purpose: the fall gate must fail it); `unsloth` is Unsloth's own QLoRA path (`bench/unsloth_recipe.py`,
  run with `--unsloth-pythonpath`).
- `--data rule --eval-every N` trains on the fall gate's rule rows (`bench/fall_gate.py`), whose loss falls
  far even from random weights, records an eval loss every N steps, and prints the fall gate of every
  recipe against the seed.
  A recipe forces levers by passing overrides to the run-plan resolver (`worker.train.speed.plan`), never
  through environment variables; each recipe prints its plan and keeps it in its results.
- `--reuse seed` reads the seed's results of an earlier invocation with the same --out, model and seq
  instead of running it again (the seed's 50 steps take minutes).
- `--profile` adds, per phase, a torch.profiler summary of one step (GPU-busy fraction, kernels, top kernels)
  and, for eager recipes, what was live at the step's peak allocation (`bench/profile_step.py`).

A phase `MxA:N` runs N optimizer steps of A micro-batches of M rows (tokens per optimizer step M·A·seq);
`MxA:N+NAME=VALUE` changes something for that phase only: a lever applied at each call
(`fused_loss_chunk_rows`) when NAME is one, else an environment variable; so
`16x1:12,16x1:12+NAME=VALUE,16x1:12` is an A/B/A in one process.
Every recipe's first phase starts from the same LoRA init and sees the same batches, so their first phases'
loss curves are compared step by step (the correctness gate).

FLOPs: MFU = tokens/s · (6·N + 12·L·A·seq) / peak, where N counts the multiply-accumulates of every
Linear of the model (lm_head included, embeddings excluded), L the layers and A the attention width
(heads × head_dim): the standard "6N + attention" training count, not counting the recomputation that
gradient checkpointing adds nor crediting LoRA for skipping the frozen weights' gradients. The table's last
column is the frozen-base count (4·N + 6·N_lora + attention: no weight gradient for frozen weights).
Peak: H100 SXM dense bf16 989 TFLOP/s (H100 PCIe 756, H200 989).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fall_gate import fall_gate, flops_per_token_both, gate_line, rule_batches  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 2e-4
SEED = 1234
# Per-step relative loss difference allowed between the recipes (bench/README.md says why): above the bf16
# rounding of their different kernels (≤ 0.6% measured), below the batch-to-batch spread of the loss.
GATE_REL_TOL = 0.01
RECIPES = (
    "seed",
    "tuneboard",
    "tb-nofused",
    "tb-offload",
    "tb-offload-lazy",
    "tb-nooffload",
    "tb-compile",
    "tb-nocompile",
    "tb-nohost",
    "tb-inputgrads",
    "tb-cudagraphs",
    "tb-cppwrapper",
    "tb-altup-bmm",
    "tb-torchdequant",
    "tb-bnbdequant",
    "tb-combo",
    "tb-badscale",
    "tb-8bitadam",
    "unsloth",
)
# The levers a recipe forces, by the run plan's names (see the module docstring for each recipe).
RECIPE_OVERRIDES: dict[str, dict[str, str]] = {
    "tb-offload-lazy": {"offload_prefetch": "off"},
    "tb-nohost": {"host_tables": "off"},
    "tb-cudagraphs": {"compile_options": '{"triton.cudagraphs": true}'},
    "tb-cppwrapper": {"compile_options": '{"cpp_wrapper": true, "triton.autotune_at_compile_time": true}'},
    "tb-torchdequant": {"torch_dequant": "on"},
    "tb-bnbdequant": {"torch_dequant": "off"},
    "tb-combo": {"compile_options": '{"combo_kernels": true}'},
    "tb-altup-bmm": {"altup_sum": "off"},
}
# Levers a phase may change between steps: they are read at each call, not applied at load.
PHASE_LEVERS = frozenset({"fused_loss_chunk_rows"})
# Recipes that force the compiled decoder layers on (tb-nocompile forces them off; the rest keep the default).
COMPILED_RECIPES = frozenset(
    {
        "tb-compile",
        "tb-inputgrads",
        "tb-cudagraphs",
        "tb-cppwrapper",
        "tb-torchdequant",
        "tb-bnbdequant",
        "tb-combo",
        "tb-altup-bmm",
        "tb-8bitadam",
    }
)
# Recipes that train with the seed's optimizer (PagedAdamW8bit) instead of the worker's choice ("auto": fused
# fp32 AdamW on a GPU for small adapters), so the fall gate compares gradients, not two optimizers.
SEED_OPTIMIZER_RECIPES = frozenset({"tb-8bitadam"})
# The deliberately broken lever (bench only): every LoRA layer scaled by alpha / sqrt(r) (rsLoRA's scale,
# 4× the configured alpha / r at r 16), as a flag flipped by mistake would. The fall gate must fail it.
BAD_SCALE_FACTOR = 4.0


# ---------------------------------------------------------------------------------------------- models


def llama_1b_config() -> Any:
    """Llama 3.2 1B dimensions (tied head, 128k vocabulary)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        architectures=["LlamaForCausalLM"],
    )


def save_model(name: str, work: Path) -> Path:
    """Save a random-weight model of dims `name` (e2b | e4b | llama1b) under `work`, or reuse it."""
    out = work / f"model-{name}"
    if (out / "config.json").exists():
        return out
    if name in ("e2b", "e4b"):
        from bench.gemma3n_dims import save_random_model

        return save_random_model(name, out)
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from worker.presets import preset_model_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(llama_1b_config()).to(dtype=torch.bfloat16)  # type: ignore[call-arg]
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(preset_model_dir("tiny-gemma3n")).save_pretrained(out)
    del model
    return out


def flops_per_token(model_dir: Path, seq: int) -> tuple[float, dict[str, float]]:
    """6·N + 12·L·A·seq for the model in `model_dir` (see the module docstring)."""
    import torch
    from transformers import AutoConfig

    from worker.train.recipes.base import instantiate_on_meta

    config = AutoConfig.from_pretrained(model_dir)
    skeleton = instantiate_on_meta(config, force_vision_stub=True)
    n = sum(m.in_features * m.out_features for m in skeleton.modules() if isinstance(m, torch.nn.Linear))
    head = skeleton.get_output_embeddings()
    if head is not None and not isinstance(head, torch.nn.Linear):
        n += head.weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    attn = 12 * text.num_hidden_layers * width * seq
    return 6 * n + attn, {"linear_params": float(n), "attention_flops_per_token": float(attn)}


def peak_flops() -> tuple[float, str]:
    """The dense bf16 peak of this GPU, from its name."""
    import torch

    if not torch.cuda.is_available():
        return float("nan"), "cpu"
    name = torch.cuda.get_device_name()
    if "PCIe" in name or "PCIE" in name:
        return 756e12, name
    return 989e12, name


def make_batches(steps: int, rows: int, seq: int, seed: int, vocab: int = 2000) -> Any:
    """[steps·rows, seq] token ids: each row repeats a random 16-token phrase (learnable, no padding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    phrases = torch.randint(10, vocab, (steps * rows, 16), generator=g)
    return phrases.repeat(1, seq // 16 + 1)[:, :seq].contiguous()


# ---------------------------------------------------------------------------------------------- recipes


def load_seed(model_dir: Path, lr: float = LR) -> Any:
    """The seed's recipe: nf4 + prepare_model_for_kbit_training + eager + HF checkpointing + LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, BitsAndBytesConfig

    from worker.train.recipes.base import causal_lm_class

    config = AutoConfig.from_pretrained(model_dir)
    skip = ["lm_head"]
    if str(config.model_type).startswith("gemma3n"):
        skip.insert(0, r".*\.altup\.")  # the seed's fixed skip list (altup + head), per the notes
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(SEED)
    model = causal_lm_class(config).from_pretrained(
        model_dir,
        quantization_config=bnb,
        dtype=torch.bfloat16,
        attn_implementation="eager",
        device_map={"": device},
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    torch.manual_seed(SEED)
    model = get_peft_model(model, lora)
    import bitsandbytes as bnb_mod

    from worker.train.trainer import trainable_parameters

    params = trainable_parameters(model)
    cls = bnb_mod.optim.PagedAdamW8bit if device == "cuda" else bnb_mod.optim.AdamW8bit
    return model, cls(params, lr=lr), None, None


def recipe_overrides(recipe: str) -> dict[str, str]:
    """The levers `recipe` forces, as overrides for the run-plan resolver (empty: the worker's defaults)."""
    overrides = dict(RECIPE_OVERRIDES.get(recipe, {}))
    if recipe in ("tb-offload", "tb-offload-lazy"):
        overrides["offload_activations"] = "on"
    elif recipe == "tb-nooffload":
        overrides["offload_activations"] = "off"
    if recipe in COMPILED_RECIPES:
        overrides["compile"] = "on"
    elif recipe == "tb-nocompile":
        overrides["compile"] = "off"
    if recipe == "tb-nofused":
        overrides["fused_loss"] = "off"
    return overrides


def load_tuneboard(
    model_dir: Path, overrides: dict[str, str] | None = None, lr: float = LR, optimizer: str = "auto"
) -> Any:
    """Tuneboard's path: the worker's loader, optimizer and fused loss, with the levers its plan says.

    `overrides` force levers by name (`recipe_overrides`); they land in the returned run plan, as a
    job's config settings would, so the results say what ran.
    """
    import torch

    from contract.config import parse_config
    from worker.train.loading import load_for_training
    from worker.train.speed.fused_loss import plan_fused_loss
    from worker.train.speed.plan import fused_loss_setting, record_fused_loss, resolve_plan
    from worker.train.trainer import build_optimizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = parse_config(
        {
            "model": {"name": str(model_dir)},
            "dataset": {"source": "preset:reverse-letters"},
            "quantization": {"method": "nf4", "double_quant": True},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": {
                "learning_rate": lr,
                "weight_decay": 0.0,
                "gradient_checkpointing": True,
                "optimizer": optimizer,
            },
        }
    )
    torch.manual_seed(SEED)
    run_plan = resolve_plan(cfg, device=device, overrides=overrides)
    loaded = load_for_training(cfg, device=device, plan=run_plan)
    run_plan = loaded.plan or run_plan
    model = loaded.model
    optimizer, _ = build_optimizer(cfg, model, device)
    fused = plan_fused_loss(
        model,
        device,
        setting=fused_loss_setting(run_plan),
        chunk_rows=run_plan.value("fused_loss_chunk_rows"),
    )
    record_fused_loss(run_plan, fused, None if fused is not None else "the model's own loss")
    return model, optimizer, fused, loaded.compiler, run_plan


def weight_breakdown(model: Any, top: int = 8) -> list[tuple[str, float]]:
    """GB of parameters and buffers on the GPU, grouped by name with layer numbers folded."""
    import re
    from collections import Counter

    sizes: Counter[str] = Counter()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_cuda:
            key = re.sub(r"\.\d+\.", ".N.", name)
            key = re.sub(r"\.(lora_[AB]|base_layer)\..*", r".\1", key)
            sizes[key] += tensor.numel() * tensor.element_size()
    return [(k, v / 1e9) for k, v in sizes.most_common(top)]


def parse_phase(phase: str) -> tuple[int, int, int, dict[str, str]]:
    """`MxA:N[+NAME=VALUE...]` → (micro-batch rows, accumulation, steps, environment for the phase)."""
    spec, *overrides = phase.split("+")
    try:
        shape, steps = spec.split(":")
        micro, accum = (int(x) for x in shape.split("x"))
        env = dict(item.split("=", 1) for item in overrides)
        return micro, accum, int(steps), env
    except ValueError as exc:
        raise SystemExit(f"phase {phase!r} is not MxA:STEPS[+NAME=VALUE...], e.g. 16x1:50") from exc


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """One recipe in this process: load, then each phase; returns the measurements."""
    if args.recipe == "unsloth":
        import unsloth  # noqa: F401  # Unsloth patches transformers: it must come first

    import torch
    from torch.profiler import record_function

    from worker.train.speed.fused_loss import causal_lm_loss
    from worker.train.trainer import trainable_parameters

    model_dir = Path(args.model_dir)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    t0 = time.perf_counter()
    run_plan = None
    if args.recipe == "seed":
        model, optimizer, plan, compiler = load_seed(model_dir, args.lr)
    elif args.recipe == "unsloth":
        from bench.unsloth_recipe import load_unsloth

        model, optimizer, plan, compiler = load_unsloth(model_dir, args.seq, args.lr, LORA_TARGETS, SEED)
    else:
        optimizer_name = "paged_adamw_8bit" if args.recipe in SEED_OPTIMIZER_RECIPES else "auto"
        model, optimizer, plan, compiler, run_plan = load_tuneboard(
            model_dir, recipe_overrides(args.recipe), args.lr, optimizer_name
        )
        print(f"[{args.recipe}] optimizer {type(optimizer).__name__}", flush=True)
        for choice in run_plan.levers.values():  # shown, so an override is never silent
            print(f"[{args.recipe}] plan {choice.name} = {choice.shown} ({choice.reason})", flush=True)
    if args.recipe == "tb-badscale":
        scaled = 0
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                for key in module.scaling:
                    module.scaling[key] *= BAD_SCALE_FACTOR
                    scaled += 1
        print(f"[{args.recipe}] LoRA scaling x{BAD_SCALE_FACTOR} on {scaled} adapters (broken on purpose)")
    if args.recipe == "tb-inputgrads":  # the loader's former way: a gradient on the embeddings' output
        model.get_base_model().enable_input_require_grads()
    load_s = time.perf_counter() - t0
    model.train()
    after_load = torch.cuda.memory_allocated() / 1e9 if cuda else 0.0
    lora_a = sum(float(p.detach().float().abs().sum()) for n, p in model.named_parameters() if "lora_A" in n)
    # listed once, as the worker's trainer does (a walk over E2B's ~2,800 modules costs ~13 ms a step)
    trainable = trainable_parameters(model)
    result: dict[str, Any] = {
        "recipe": args.recipe,
        "load_s": round(load_s, 1),
        "allocated_after_load_gb": round(after_load, 2),
        "trainable_params": sum(p.numel() for p in trainable),
        "lora_a_abs_sum": lora_a,
        "loss_impl": plan.impl if plan is not None else "model",
        "offload": any(
            getattr(getattr(m, "_gradient_checkpointing_func", None), "_tuneboard_offload", False)
            for m in model.modules()
        ),
        "compiled": compiler is not None,
        "plan": run_plan.to_dict() if run_plan is not None else None,
        "phases": [],
    }
    if cuda:
        for key, gb in weight_breakdown(model):
            print(f"[{args.recipe}] weights {gb:6.2f} GB {key}", flush=True)
    seq = args.seq
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = min(2000, int(text_config.vocab_size))
    for phase_index, phase in enumerate(args.phases.split(",")):
        micro, accum, steps, env = parse_phase(phase)
        phase_plan = plan
        levers = {k: v for k, v in env.items() if k in PHASE_LEVERS}
        if "fused_loss_chunk_rows" in levers and plan is not None:
            phase_plan = dataclasses.replace(plan, chunk_rows=int(levers["fused_loss_chunk_rows"]))
        saved_env = {k: os.environ.get(k) for k in env if k not in levers}
        os.environ.update({k: v for k, v in env.items() if k not in levers})  # put back after the phase
        rows = micro * accum
        # The first phase uses the shared batches (same for every recipe); later ones their own stream.
        batch_seed = SEED if phase_index == 0 else SEED + 7 + rows
        if args.data == "rule":
            batches = rule_batches(steps * rows, seq, batch_seed)
        else:
            batches = make_batches(steps, rows, seq, batch_seed, vocab)
        eval_rows = rule_batches(args.eval_rows, seq, SEED + 1) if args.eval_every else None
        eval_losses: list[tuple[int, float]] = []
        train_peak = [0.0, 0.0]
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        losses: list[float] = []
        times: list[float] = []
        error = None

        def run_step(
            block: Any, micro: int = micro, accum: int = accum, rows: int = rows, plan: Any = phase_plan
        ) -> float:
            # The micro-batch losses stay on the device until the step ends: reading each one would make
            # the host wait for the GPU between micro-batches (one sync per step, as in the worker).
            total = torch.zeros((), device=device)
            num_items = torch.tensor(rows * (seq - 1), device=device)
            for a in range(accum):
                ids = block[a * micro : (a + 1) * micro].to(device)
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
                with (
                    torch.autocast(device_type=device, dtype=torch.bfloat16),
                    record_function("step:forward"),
                ):
                    if plan is not None:
                        loss = causal_lm_loss(model, inputs, plan, num_items)
                    else:
                        loss = model(**inputs).loss / accum
                with record_function("step:backward"):
                    loss.backward()
                total += loss.detach().float()
            with record_function("step:optimizer"):
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return float(total)

        def evaluate(
            after_step: int,
            micro: int = micro,
            plan: Any = phase_plan,
            eval_rows: Any = eval_rows,
            eval_losses: list[tuple[int, float]] = eval_losses,
            train_peak: list[float] = train_peak,
        ) -> None:
            # Forward only, in eval mode (layers run eagerly, as in the worker's evaluation), with the
            # training loss function, 4 rows at a time; its memory peak and time stay out of the phase's
            # numbers. Grad stays on: on CPU, bitsandbytes repacks a 4-bit weight in place on a no-grad eval
            # forward (`Linear4bit.forward`, AVX512-BF16 path), after which the seed's LoRA gradients of whole
            # layers came out zero (its loss then fell 6x slower; tiny preset, bitsandbytes 0.50.2).
            if cuda:
                train_peak[0] = max(train_peak[0], torch.cuda.max_memory_allocated() / 1e9)
                train_peak[1] = max(train_peak[1], torch.cuda.max_memory_reserved() / 1e9)
            model.eval()
            total = 0.0
            chunks = 0
            chunk = min(micro, 4)
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                for start in range(0, eval_rows.shape[0], chunk):
                    ids = eval_rows[start : start + chunk].to(device)
                    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
                    if plan is not None:
                        loss = causal_lm_loss(model, inputs, plan)
                    else:
                        loss = model(**inputs).loss
                    total += float(loss.detach())
                    del loss
                    chunks += 1
            model.train()
            eval_losses.append((after_step, total / max(chunks, 1)))
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

        compile_before = compiler.compile_s if compiler is not None else 0.0
        try:
            if eval_rows is not None:
                evaluate(0)
            for step in range(steps):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                total = run_step(batches[step * rows : (step + 1) * rows])
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                losses.append(total)
                if eval_rows is not None and ((step + 1) % args.eval_every == 0 or step + 1 == steps):
                    evaluate(step + 1)
            if args.profile and cuda:
                from bench.profile_step import profile_memory, profile_time

                last = batches[(steps - 1) * rows : steps * rows]
                trace = None
                if args.trace_dir:
                    Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
                    trace = Path(args.trace_dir) / f"trace-{args.recipe}-{phase_index}.json.gz"
                profile_time(functools.partial(run_step, last), trace_path=trace)
                if compiler is None:  # allocator history + compiled checkpointed layers: pytorch#179536
                    profile_memory(functools.partial(run_step, last))
        except torch.cuda.OutOfMemoryError as exc:
            error = f"out of memory: {str(exc).splitlines()[0][:160]}"
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        measured = times[3:] if len(times) > 4 else times[1:] or times
        step_s = statistics.median(measured) if measured else float("nan")
        tokens = rows * seq
        result["phases"].append(
            {
                "micro": micro,
                "accum": accum,
                "env": env,
                "steps": len(times),
                "tokens_per_step": tokens,
                "step_s": step_s,
                "first_step_s": times[0] if times else None,
                "compile_s": (compiler.compile_s - compile_before) if compiler is not None else None,
                "tokens_per_s": tokens / step_s if measured else None,
                "peak_allocated_gb": max(train_peak[0], torch.cuda.max_memory_allocated() / 1e9)
                if cuda
                else None,
                "peak_reserved_gb": max(train_peak[1], torch.cuda.max_memory_reserved() / 1e9)
                if cuda
                else None,
                "losses": losses,
                "eval_losses": eval_losses,
                "error": error,
            }
        )
        shown = {k: v for k, v in result["phases"][-1].items() if k not in ("losses", "eval_losses")}
        print(
            f"[{args.recipe}] {phase}: {json.dumps(shown)}",
            flush=True,
        )
    return result


# ---------------------------------------------------------------------------------------------- report


def gate(seed_losses: list[float], tb_losses: list[float], tol: float = GATE_REL_TOL) -> dict[str, Any]:
    """Step-by-step relative difference of two loss curves; passes when every step is within `tol`."""
    n = min(len(seed_losses), len(tb_losses))
    rel = [abs(a - b) / max(abs(a), 1e-9) for a, b in zip(seed_losses[:n], tb_losses[:n], strict=True)]
    finite = all(math.isfinite(x) for x in [*seed_losses[:n], *tb_losses[:n]])
    return {
        "steps": n,
        "step1_rel_diff": rel[0] if rel else None,
        "max_rel_diff": max(rel) if rel else None,
        "mean_rel_diff": sum(rel) / n if n else None,
        "seed_first_last": (seed_losses[0], seed_losses[n - 1]) if n else None,
        "tb_first_last": (tb_losses[0], tb_losses[n - 1]) if n else None,
        "tolerance": tol,
        "passed": bool(n) and finite and max(rel) <= tol,
    }


def table(
    results: list[dict[str, Any]], fpt: float, peak: float, seq: int, fpt_frozen: float | None = None
) -> list[str]:
    """Markdown rows: one per recipe phase, with ratios against the seed's phase of the same tokens/step.

    MFU is the 6N convention (`fpt`); with `fpt_frozen` a last column gives the frozen-base count too."""
    seed = next((r for r in results if r["recipe"] == "seed"), None)
    base: dict[int, dict[str, Any]] = {p["tokens_per_step"]: p for p in seed["phases"]} if seed else {}
    lines = [
        "| recipe | micro × accum × seq | tokens/step | tokens/s | × seed | peak alloc GB | × seed "
        "| peak reserved GB | MFU |" + (" MFU frozen base |" if fpt_frozen else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if fpt_frozen else ""),
    ]
    for r in results:
        for p in r["phases"]:
            ref = base.get(p["tokens_per_step"])
            tps = p["tokens_per_s"]
            speed = f"{tps / ref['tokens_per_s']:.2f}" if tps and ref and ref.get("tokens_per_s") else "-"
            mem = (
                f"{p['peak_allocated_gb'] / ref['peak_allocated_gb']:.2f}"
                if ref and p["peak_allocated_gb"] and ref["peak_allocated_gb"]
                else "-"
            )
            mfu = f"{100 * tps * fpt / peak:.1f}%" if tps and math.isfinite(peak) else "-"
            if fpt_frozen:
                mfu += f" | {100 * tps * fpt_frozen / peak:.1f}%" if tps and math.isfinite(peak) else " | -"
            own_loss = r["recipe"] not in ("seed", "unsloth")
            name = r["recipe"] + (f" ({r['loss_impl']} loss)" if own_loss else "")
            if p.get("env"):
                name += " [" + " ".join(f"{k}={v}" for k, v in p["env"].items()) + "]"
            if r.get("offload"):
                name += " + CPU offload"
            if r.get("compiled"):
                name += " + compiled"
            cell = f"{tps:.0f}" if tps else (p["error"] or "-")
            lines.append(
                f"| {name} | {p['micro']} × {p['accum']} × {seq} | {p['tokens_per_step']} | {cell} "
                f"| {speed} | "
                f"{(p['peak_allocated_gb'] or 0):.2f} | {mem} | {(p['peak_reserved_gb'] or 0):.2f} | {mfu} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e2b", help="e2b | e4b | llama1b, or a saved model directory")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--phases", default="4x4:50", help="seed recipe phases MxA:STEPS,...")
    parser.add_argument("--tb-phases", default="16x1:50", help="tuneboard phases MxA:STEPS,...")
    parser.add_argument("--recipes", default="seed,tb-compile")
    parser.add_argument(
        "--data",
        default="random",
        choices=["random", "rule"],
        help="random: repeated random phrases (flat loss from random weights); rule: the 24-letter cycle "
        "of bench.fall_gate, whose loss falls far (the fall gate)",
    )
    parser.add_argument("--lr", type=float, default=LR, help="learning rate of every recipe")
    parser.add_argument("--eval-every", type=int, default=0, help="eval loss every N steps (0: none)")
    parser.add_argument("--eval-rows", type=int, default=16, help="held-out rule rows for the eval loss")
    parser.add_argument("--unsloth-phases", default="", help="unsloth phases (default: --tb-phases)")
    parser.add_argument(
        "--unsloth-pythonpath",
        default="",
        help="PYTHONPATH for the unsloth recipe's process (its own transformers/trl/datasets)",
    )
    parser.add_argument("--nofused-phases", default="4x1:10,16x1:10", help="tb-nofused phases")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tb-speed")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON results")
    parser.add_argument("--timeout", type=int, default=400, help="seconds per recipe process")
    parser.add_argument("--profile", action="store_true", help="profile one step of each phase's shape")
    parser.add_argument(
        "--trace-dir", default="", help="with --profile: write each profile's Chrome trace here"
    )
    parser.add_argument(
        "--reuse",
        default="",
        help="recipes read from an earlier invocation's results (same --out, model and seq), not rerun",
    )
    # internal: run one recipe in this process
    parser.add_argument("--recipe", choices=RECIPES, default=None)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.recipe:
        result = run_recipe(args)
        Path(args.json).write_text(json.dumps(result), encoding="utf-8")
        return

    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = Path(args.model) if Path(args.model).is_dir() else save_model(args.model, args.work)
    print(f"model {model_dir} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    fpt, fdetail = flops_per_token(model_dir, args.seq)
    lora_params = 0.0
    peak, gpu = peak_flops()
    results = []
    for recipe in args.recipes.split(","):
        phases = args.phases if recipe == "seed" else (args.tb_phases or args.phases)
        if recipe == "tb-nofused" and args.nofused_phases:
            phases = args.nofused_phases
        if recipe == "unsloth" and args.unsloth_phases:
            phases = args.unsloth_phases
        path = out / f"speed-{Path(args.model).name}-{args.seq}-{recipe}.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.speed",
            "--recipe",
            recipe,
            "--model-dir",
            str(model_dir),
            "--seq",
            str(args.seq),
            "--phases",
            phases,
            "--json",
            str(path),
            "--data",
            args.data,
            "--lr",
            str(args.lr),
            "--eval-every",
            str(args.eval_every),
            "--eval-rows",
            str(args.eval_rows),
            *(["--profile"] if args.profile else []),
            *(["--trace-dir", args.trace_dir] if args.trace_dir else []),
        ]
        if recipe in args.reuse.split(",") and path.exists():
            print(f"{recipe}: results of an earlier invocation reused ({path})", flush=True)
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        path.unlink(missing_ok=True)  # a failed run must not leave an earlier result standing in for it
        start = time.perf_counter()
        code: int | str
        try:
            env = None
            if recipe == "unsloth" and args.unsloth_pythonpath:
                env = {**os.environ, "PYTHONPATH": args.unsloth_pythonpath}
            proc = subprocess.run(cmd, timeout=args.timeout, check=False, env=env)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"{recipe}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if path.exists():
            results.append(json.loads(path.read_text(encoding="utf-8")))
    summary = {
        "model": args.model,
        "seq": args.seq,
        "gpu": gpu,
        "peak_flops": peak,
        "flops_per_token": fpt,
        **fdetail,
    }
    by = {r["recipe"]: r for r in results}
    lora_params = float(next((r["trainable_params"] for r in results if r.get("trainable_params")), 0))
    both = flops_per_token_both(fdetail["linear_params"], lora_params, fdetail["attention_flops_per_token"])
    summary["flops_per_token_frozen_base"] = both["frozen_base"]
    summary["lora_params"] = lora_params
    # The correctness gate: the seed against Tuneboard's default path, else the first Tuneboard variant run.
    main_tb = next((r for r in ("tuneboard", *RECIPES[2:]) if r in by), None)
    if "seed" in by and main_tb is not None:
        summary["gate"] = gate(by["seed"]["phases"][0]["losses"], by[main_tb]["phases"][0]["losses"])
        summary["gate"]["against"] = "seed"
        summary["gate"]["recipe"] = main_tb
    lines = [
        f"GPU {gpu}; model {args.model}; FLOPs/token {fpt / 1e9:.2f} G "
        f"(6·{fdetail['linear_params'] / 1e9:.2f} G linear params "
        f"+ attention {fdetail['attention_flops_per_token'] / 1e9:.2f} G); peak {peak / 1e12:.0f} TFLOP/s",
        f"frozen-base FLOPs/token {both['frozen_base'] / 1e9:.2f} G (4·N + 6·{lora_params / 1e6:.1f} M LoRA "
        "+ attention; bench/fall_gate.py)",
        *table(results, fpt, peak, args.seq, both["frozen_base"]),
    ]
    for r in results:
        lines.append(
            f"{r['recipe']}: load {r['load_s']} s, {r['allocated_after_load_gb']} GB after load, "
            f"{r['trainable_params']:,} trainable, LoRA-A |sum| {r['lora_a_abs_sum']:.4f}"
            + "".join(
                f"; compile {p['compile_s']:.0f} s in {p['micro']}x{p['accum']} "
                f"(first step {p['first_step_s']:.0f} s)"
                for p in r["phases"]
                if p.get("compile_s")
            )
        )
    # A lever on vs off must not change the loss: gate each variant against a same-path recipe present.
    for variant in RECIPES[3:]:
        references = ("tuneboard", "tb-nooffload", "tb-nocompile", "tb-compile")
        ref = next((x for x in references if x in by and x != variant), None)
        if variant in by and ref is not None:
            summary[f"gate-{variant}"] = gate(
                by[ref]["phases"][0]["losses"], by[variant]["phases"][0]["losses"]
            )
            summary[f"gate-{variant}"]["against"] = ref
    for key in [k for k in summary if k.startswith("gate")]:
        g = summary[key]
        names = ("seed", g["recipe"]) if key == "gate" else (g["against"], key[len("gate-") :])
        lines.append(
            f"loss gate {names[1]} vs {names[0]} over {g['steps']} steps: "
            f"step-1 rel diff {g['step1_rel_diff']:.2e}, max {g['max_rel_diff']:.2e}, "
            f"mean {g['mean_rel_diff']:.2e} (tolerance {g['tolerance']}); {names[0]} {g['seed_first_last']}, "
            f"{names[1]} {g['tb_first_last']} → {'PASS' if g['passed'] else 'FAIL'}"
        )
    if args.data == "rule" and "seed" in by:
        ref = by["seed"]["phases"][0]
        for r in results:
            if r["recipe"] == "seed":
                continue
            cand = r["phases"][0]
            g = fall_gate(
                ref["losses"],
                cand["losses"],
                [v for _, v in ref.get("eval_losses", [])],
                [v for _, v in cand.get("eval_losses", [])],
            )
            summary[f"fall-gate-{r['recipe']}"] = g
            lines.append(gate_line(r["recipe"], "seed", g))
    summary["table"] = lines
    (out / f"speed-{Path(args.model).name}-{args.seq}-summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
