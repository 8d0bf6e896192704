"""Load a base model for QLoRA training: resolve the name, quantize with the recipe's skip list, add LoRA.

No `prepare_model_for_kbit_training`: it upcasts every frozen non-quantized weight to fp32, which doubles
Gemma 3n's multi-GB per-layer embedding tables. Gradient checkpointing is enabled by hand instead,
non-reentrant, so the embeddings' output needs no gradient (on CUDA the checkpointed layers' inputs wait in
CPU memory: `worker.train.speed.offload`). After loading, the model is checked: nothing meant to stay
un-quantized got packed, and every trainable parameter is floating point.

It is one thing past 500 lines, one chain: the name resolves to a source, the source and the recipe
give the skip list, the skip list the quantization config, and the loaded model is verified against that
same list before LoRA goes on; splitting it would pass the chain's state between modules.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.catalog import PRESET_PREFIX
from contract.config import JobConfig
from contract.plan import RunPlan
from worker.train.recipes import Recipe, recipe_for
from worker.train.recipes.base import generalize_names, linear_names, pattern_keeps
from worker.train.speed.altup import patch_altup_predict
from worker.train.speed.compile import compile_checkpointed_layers
from worker.train.speed.dequant import unpack_with_torch
from worker.train.speed.host_tables import keep_tables_on_host
from worker.train.speed.offload import enable_activation_offload
from worker.train.speed.plan import resolve_plan

Report = Callable[[str, dict[str, Any]], None]


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; `field` names the config field to change, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QuantizationIncompatibleError(ModelLoadError):
    """A module that cannot train quantized was quantized (ExitCode.QUANTIZATION_INCOMPATIBLE)."""


@dataclass
class LoadedModel:
    """A PEFT model ready to train, with its tokenizer and what was decided while loading it."""

    model: Any  # peft.PeftModel
    tokenizer: Any
    recipe: Recipe
    kept_in_full_precision: list[str]  # the skip patterns actually used (recipe + config + preflight + auto)
    notes: list[str]
    num_trainable_params: int
    num_total_params: int
    source: str = ""  # resolved local directory or hub id
    device: str = "cpu"
    dtype: str = "float32"
    kept_module_names: list[str] = field(default_factory=list)  # Linear layers left un-quantized
    compiler: Any = None  # worker.train.speed.compile.LayerCompiler when the layers are compiled
    plan: RunPlan | None = None  # the speed levers as applied (amended when compiling fell back)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from."""

    location: str  # a local directory or a hub id
    revision: str | None
    is_preset: bool
    is_local: bool
    # Build a stand-in vision tower even when timm is installed: presets and twins were saved with one.
    force_vision_stub: bool = False


def resolve_model_source(name: str, revision: str | None = None) -> ModelSource:
    """Turn `preset:<name>`, a local directory or a hub id into a loadable location."""
    if name.startswith(PRESET_PREFIX):
        from worker.presets import preset_model_dir

        location = str(preset_model_dir(name[len(PRESET_PREFIX) :]))
        return ModelSource(location, None, True, True, force_vision_stub=True)
    path = Path(name).expanduser()
    if path.is_dir():
        from worker.presets import is_preset_dir

        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json; point model.name at a saved model directory", "model.name"
            )
        preset = is_preset_dir(path)
        return ModelSource(str(path), None, preset, True, force_vision_stub=preset)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, since hub ids are owner/name
        raise ModelLoadError(f"model directory {name} does not exist; check model.name", "model.name")
    return ModelSource(name, revision, False, False)


def _hub_error(name: str, exc: Exception) -> ModelLoadError:
    kind = type(exc).__name__
    if kind == "GatedRepoError":
        return ModelLoadError(
            f"model {name} is gated on the hub: accept its licence and set HF_TOKEN, or use a local path",
            "model.name",
        )
    if kind == "RepositoryNotFoundError":
        return ModelLoadError(f"model {name} does not exist on the hub; check model.name", "model.name")
    if kind == "RevisionNotFoundError":
        return ModelLoadError(
            f"revision of {name} not found on the hub; check model.revision", "model.revision"
        )
    return ModelLoadError(
        f"model {name} not found locally and the hub is unreachable — use a local path or a preset "
        f"(detail: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        "model.name",
    )


def load_model_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The transformers config of `source`, with hub failures turned into plain-words errors."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            source.location, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        if source.is_local:
            raise ModelLoadError(
                f"cannot read the model config in {source.location}: {exc}", "model.name"
            ) from exc
        raise _hub_error(source.location, exc) from exc


def resolve_dtype(cfg: JobConfig, device: str, recipe: Recipe) -> Any:
    """The torch dtype of non-quantized weights and compute: the config's, or the recipe's for the device."""
    import torch

    name: str = cfg.model.dtype
    if name == "auto":
        if device.startswith("cuda"):
            name = recipe.gpu_dtype
            if name == "bfloat16" and not torch.cuda.is_bf16_supported():
                name = "float16"
        else:
            name = recipe.cpu_dtype
    return getattr(torch, name)


def bnb_config(cfg: JobConfig, dtype: Any, skip: Sequence[str]) -> Any:
    """The BitsAndBytesConfig for cfg.quantization, or None for method "none"."""
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if q.method == "none":
        return None
    if q.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.method,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=list(skip),  # replaces the default list: the recipe's includes lm_head
    )


def modules_matching(model: Any, name: str) -> list[str]:
    """Module names PEFT picks for `name` in modules_to_save / target_modules (exact or dotted suffix)."""
    return [n for n, _ in model.named_modules() if n and (n == name or n.endswith("." + name))]


def keep_for_modules_to_save(
    skeleton: Any, modules_to_save: Sequence[str], skip: list[str]
) -> tuple[list[str], list[str]]:
    """Patterns that keep the Linears under each modules_to_save entry un-quantized, and notes saying so.

    PEFT trains a full copy of each such module; a packed 4-bit weight is uint8 and cannot require
    gradients (the seed's "only Tensors of floating point dtype can require gradients").
    """
    linears = linear_names(skeleton)
    extra: list[str] = []
    notes: list[str] = []
    for wanted in modules_to_save:
        found = modules_matching(skeleton, wanted)
        if not found:
            raise ModelLoadError(
                f"lora.modules_to_save names {wanted!r}, which matches no module of this model; "
                "use a module name such as 'embed_tokens' or 'lm_head'",
                "lora.modules_to_save",
            )
        inside = [n for n in linears if any(n == f or n.startswith(f + ".") for f in found)]
        packed = [n for n in inside if not pattern_keeps(n, [*skip, *extra])]
        if packed:
            new = [p for p in generalize_names(found) if p not in skip and p not in extra]
            extra.extend(new)
            notes.append(
                f"'{wanted}' is trained in full (lora.modules_to_save), so its {len(packed)} Linear layer(s) "
                "are kept un-quantized: 4-bit weights are integers and cannot be trained."
            )
    return extra, notes


def quantized_layer_types() -> tuple[type, ...]:
    """The bitsandbytes layer classes whose weights are packed integers."""
    import bitsandbytes as bnb

    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def verify_loaded(model: Any, kept_names: Sequence[str]) -> None:
    """Raise QuantizationIncompatibleError if a module meant to stay un-quantized was packed."""
    qtypes = quantized_layer_types()
    modules = dict(model.named_modules())
    packed = [n for n in kept_names if n in modules and isinstance(modules[n], qtypes)]
    if packed:
        raise QuantizationIncompatibleError(
            f"{len(packed)} module(s) meant to stay in full precision were quantized: {packed[:5]}; "
            "this is a skip-pattern bug — add their names to quantization.keep_in_full_precision"
        )


def verify_trainable(model: Any) -> None:
    """Raise if a trainable parameter is not floating point (integers cannot receive gradients)."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not p.is_floating_point()]
    if bad:
        raise QuantizationIncompatibleError(
            f"trainable parameters with integer (quantized) storage: {bad[:5]}; keep their modules "
            "un-quantized with quantization.keep_in_full_precision, or remove them from lora.modules_to_save"
        )


def _check_seq_len(cfg: JobConfig, config: Any) -> None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.training.max_seq_len > limit:
        raise ModelLoadError(
            f"training.max_seq_len is {cfg.training.max_seq_len} but {cfg.model.name} handles at most "
            f"{limit} tokens; set training.max_seq_len to {limit} or less",
            "training.max_seq_len",
        )


def _tokenizer(source: ModelSource, cfg: JobConfig, recipe: Recipe, notes: list[str]) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            source.location, revision=source.revision, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {cfg.model.name}: {exc}", "model.name") from exc
    if not getattr(tok, "chat_template", None) and recipe.chat_template:
        tok.chat_template = recipe.chat_template
        notes.append("The tokenizer has no chat template; the recipe's default template is used.")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        notes.append("The tokenizer has no padding token; the end-of-sequence token pads.")
    return tok


def drop_input_gradients(model: Any) -> None:
    """Remove the hooks that make the input embeddings' output require a gradient, if any were added.

    With non-reentrant checkpointing the LoRA weights inside each layer connect the loss to the graph by
    themselves; a gradient on the embeddings' output only makes autograd save the activations of, and run
    the backward through, the frozen work before the first layer. (transformers' own
    `disable_input_require_grads` raised in older versions when no hook was added; this never does.)
    """
    hooks = getattr(model, "_require_grads_hooks", None) or []
    single = getattr(model, "_require_grads_hook", None)
    for hook in {id(h): h for h in [*hooks, *([single] if single is not None else [])]}.values():
        hook.remove()
    for name in ("_require_grads_hooks", "_require_grads_hook"):
        if hasattr(model, name):
            delattr(model, name)


def _is_attention_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "attention" in text and any(k in text for k in ("flash", "sdpa", "attn_implementation", "eager"))


def _emit(report: Report | None, message: str) -> None:
    if report is not None:
        report("log", {"level": "info", "message": message})


def load_for_training(
    cfg: JobConfig,
    *,
    device: str,
    report: Report | None = None,
    extra_keep: Sequence[str] = (),
    plan: RunPlan | None = None,
) -> LoadedModel:
    """Load cfg.model quantized per cfg.quantization with the recipe's skip list, then wrap it with LoRA.

    `plan` says which speed levers to apply (default: resolved from `cfg` for `device`, one process).
    """
    source = resolve_model_source(cfg.model.name, cfg.model.revision)
    config = load_model_config(source, cfg.model.trust_remote_code)
    _check_seq_len(cfg, config)
    if source.is_preset and not device.startswith("cuda"):
        import torch

        # A preset's matmuls are tiny (hidden 64-128): a second thread buys nothing, and on a busy CPU the
        # threads spin-wait each other. Measured, the demo on 2 cores with other work running: 33 s with
        # one thread, 215 s with two (16 s either way when the machine was nearly idle).
        torch.set_num_threads(1)
    return load_source_for_training(
        cfg, source, config, device=device, report=report, extra_keep=extra_keep, plan=plan
    )


def load_source_for_training(
    cfg: JobConfig,
    source: ModelSource,
    config: Any,
    *,
    device: str,
    report: Report | None = None,
    extra_keep: Sequence[str] = (),
    keep_override: Sequence[str] | None = None,
    with_tokenizer: bool = True,
    allow_compile: bool = True,
    plan: RunPlan | None = None,
) -> LoadedModel:
    """load_for_training on an already resolved source; `keep_override` replaces the recipe's skip patterns.

    Preflight uses this on its tiny twin (with `allow_compile` False: compiling a one-step twin costs
    minutes and buys nothing), and tests use `keep_override` to reproduce naive skip lists.
    """
    from peft import LoraConfig, get_peft_model

    if plan is None:
        plan = resolve_plan(cfg, device=device)
    if not allow_compile and plan.is_on("compile"):
        plan = resolve_plan(
            cfg, device=device, world_size=plan.world_size, overrides=plan.overrides,
            compile_fallback="off for this load (preflight's one-step twin)",
        )  # fmt: skip
    from worker.train.cpu import disable_cpu_weight_repacking
    from worker.train.recipes.base import causal_lm_class, instantiate_on_meta
    from worker.train.recipes.gemma3n import timm_free_vision_tower

    skeleton = instantiate_on_meta(
        config, trust_remote_code=cfg.model.trust_remote_code, force_vision_stub=source.force_vision_stub
    )
    recipe = recipe_for(skeleton)
    # An override replaces the recipe's judgement, so its explanations no longer apply.
    notes = list(recipe.notes) if keep_override is None else []

    method = cfg.quantization.method
    base_keep = tuple(recipe.skip_modules(method=method)) if keep_override is None else tuple(keep_override)
    skip: list[str] = []
    for pattern in (*base_keep, *cfg.quantization.keep_in_full_precision, *extra_keep):
        if pattern and pattern not in skip:
            skip.append(pattern)
    for pattern in skip:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ModelLoadError(
                f"keep-in-full-precision pattern {pattern!r} is not a valid regex ({exc}); "
                "escape dots as \\.",
                "quantization.keep_in_full_precision",
            ) from exc
    if cfg.quantization.method != "none":
        auto_keep, auto_notes = keep_for_modules_to_save(skeleton, cfg.lora.modules_to_save, skip)
        skip.extend(auto_keep)
        notes.extend(auto_notes)
    if extra_keep:
        notes.append(f"Preflight asked to keep {list(extra_keep)} in full precision.")
    all_linears = linear_names(skeleton)
    quantizing = cfg.quantization.method != "none"
    kept_names = [n for n in all_linears if pattern_keeps(n, skip)] if quantizing else []

    # The tokenizer first: it is quick, and a broken one should fail before minutes of weight loading.
    tokenizer = _tokenizer(source, cfg, recipe, notes) if with_tokenizer else None
    dtype = resolve_dtype(cfg, device, recipe)
    attn = (
        recipe.attn_implementation
        if cfg.model.attn_implementation == "auto"
        else cfg.model.attn_implementation
    )
    dtype_name = str(dtype).removeprefix("torch.")
    _emit(report, f"Loading {cfg.model.name} ({cfg.quantization.method}, {dtype_name}) on {device}")
    stub = (
        timm_free_vision_tower(force=source.force_vision_stub)
        if recipe.needs_vision_stub
        else contextlib.nullcontext()
    )
    try:
        with stub:
            model = causal_lm_class(config).from_pretrained(
                source.location,
                revision=source.revision,
                quantization_config=bnb_config(cfg, dtype, skip),
                dtype=dtype,
                attn_implementation=attn,
                device_map={"": device},
                trust_remote_code=cfg.model.trust_remote_code,
            )
    except (OSError, ValueError, ImportError) as exc:
        if _is_attention_error(exc):
            raise ModelLoadError(
                f"attention kernel {attn!r} cannot be used here ({str(exc).splitlines()[0]}); "
                "set model.attn_implementation to auto, sdpa or eager",
                "model.attn_implementation",
            ) from exc
        if isinstance(exc, ImportError):
            raise
        if source.is_local:
            raise ModelLoadError(
                f"cannot load the weights in {source.location}: {exc}", "model.name"
            ) from exc
        raise _hub_error(source.location, exc) from exc

    if quantizing and device == "cpu":
        disable_cpu_weight_repacking(model)
    if quantizing:
        verify_loaded(model, kept_names)

    # The KV cache is useless in training and conflicts with checkpointing (multimodal: the text config too).
    model.config.use_cache = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    if plan.is_on("host_tables"):
        moved = keep_tables_on_host(model)
        if moved:
            _emit(
                report, f"Frozen lookup tables kept in CPU memory, rows copied per batch: {', '.join(moved)}"
            )
    if cfg.training.gradient_checkpointing:
        # Non-reentrant checkpointing needs no gradient on the embeddings' output (the reentrant kind would
        # cut the graph without one), so the hook transformers adds for it goes: autograd then records
        # nothing before the first decoder layer (Gemma 3n: the per-layer-input projection and AltUp's input
        # projections).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        drop_input_gradients(model)
        offloaded = plan.is_on("offload_activations") and enable_activation_offload(
            model, prefetch=plan.is_on("offload_prefetch")
        )
        if offloaded:
            _emit(report, "Checkpointed layer inputs are offloaded to CPU memory until the backward pass")
    compiler = None
    if plan.is_on("compile"):
        compiler = compile_checkpointed_layers(
            model, backend=plan.value("compile_backend"), options=plan.value("compile_options")
        )
        if compiler is not None:
            _emit(
                report,
                "Decoder layers are compiled (torch.compile): the first step takes a few minutes longer "
                "on a GPU while they compile",
            )
        else:  # the levers that follow compilation follow it back to eager
            plan = resolve_plan(
                cfg, device=device, world_size=plan.world_size, overrides=plan.overrides,
                compile_fallback="compiling was planned, but the model has no checkpointed decoder layers",
            )  # fmt: skip
    if plan.is_on("altup_sum") and patch_altup_predict(model):
        _emit(report, "Gemma 3n AltUp predictions are computed as multiply-adds (fused when compiled)")
    if quantizing and plan.is_on("torch_dequant"):
        rebound = unpack_with_torch(model)
        if rebound:
            _emit(
                report,
                f"{rebound} packed 4-bit layers unpack their weights with PyTorch ops (fused when compiled)",
            )

    if cfg.lora.target_modules == "auto":
        targets: Any = recipe.lora_target_regex
        if not recipe.lora_target_names:
            raise ModelLoadError(
                f"found no projection layers to adapt in {recipe.architecture}; "
                "list them in lora.target_modules",
                "lora.target_modules",
            )
    else:
        targets = list(cfg.lora.target_modules)
        unmatched = [t for t in targets if not modules_matching(skeleton, t)]
        if unmatched:
            raise ModelLoadError(
                f"lora.target_modules {unmatched} match no module of {recipe.architecture}; "
                f"for example: {sorted({n.rsplit('.', 1)[-1] for n in recipe.lora_target_names})}",
                "lora.target_modules",
            )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r as a float
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except RuntimeError as exc:
        if "floating point dtype" in str(exc):
            raise QuantizationIncompatibleError(
                "a module PEFT must train in full is quantized (4-bit weights are integers and cannot take "
                f"gradients): {exc}; add it to quantization.keep_in_full_precision",
                "lora.modules_to_save",
            ) from exc
        raise
    if cfg.training.gradient_checkpointing:
        # PEFT adds the same hook again on un-quantized models.
        drop_input_gradients(peft_model.get_base_model())
    verify_trainable(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    _emit(
        report,
        f"Loaded {recipe.architecture}: {trainable:,} trainable of {total:,} parameters; "
        f"{len(kept_names)} Linear layers kept in full precision",
    )
    return LoadedModel(
        model=peft_model,
        tokenizer=tokenizer,
        recipe=recipe,
        kept_in_full_precision=skip if quantizing else [],
        notes=notes,
        num_trainable_params=int(trainable),
        num_total_params=int(total),
        source=source.location,
        device=device,
        dtype=dtype_name,
        kept_module_names=kept_names,
        compiler=compiler,
        plan=plan,
    )
