"""Preflight: train one step on a tiny twin of the requested model before spending real GPU time.

The twin has the same architecture and module names as the real model, shrunk (few layers, hidden 64,
vocab 512) with random weights, on CPU. It is loaded with the requested quantization and LoRA settings
and the recipe, then runs forward, backward and one optimizer step. When a module breaks under
quantization, preflight finds which one from the failure (the traceback's frames name the module
objects), keeps every module of that kind in full precision, and tries again.
"""

from __future__ import annotations

import contextlib
import copy
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.config import JobConfig
from worker.train.loading import (
    ModelLoadError,
    ModelSource,
    load_model_config,
    load_source_for_training,
    quantized_layer_types,
    resolve_model_source,
)
from worker.train.recipes.base import TOWER_NAMES, generalize_names, pattern_keeps

Report = Callable[[str, dict[str, Any]], None]

TWIN_HIDDEN = 64  # a multiple of 64: bitsandbytes packs 4-bit blocks of 64 values
TWIN_LAYERS = 4
TWIN_VOCAB = 512
TWIN_SEQ = 16
TWIN_BATCH = 2
PEFT_PREFIX = "base_model.model."


@dataclass
class PreflightResult:
    """What preflight found: whether training can start, and what must stay in full precision."""

    ok: bool
    kept_in_full_precision: list[str]  # the complete skip list the successful attempt used
    notes: list[str]
    summary: str  # plain words for the run page
    seconds: float
    extra_keep: list[str] = field(default_factory=list)  # patterns to pass to load_for_training(extra_keep=)

    def payload(self) -> dict[str, Any]:
        """The `preflight` event payload (contract/protocol.py)."""
        return {
            "ok": self.ok,
            "summary": self.summary,
            "kept_in_full_precision": list(self.kept_in_full_precision),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------- the twin


def _shrink_text_config(text: Any) -> None:
    """Shrink a decoder config in place, touching only attributes it has."""
    layers = min(int(getattr(text, "num_hidden_layers", TWIN_LAYERS) or TWIN_LAYERS), TWIN_LAYERS)
    heads = 2
    kv_heads = getattr(text, "num_key_value_heads", None)
    attn_heads = getattr(text, "num_attention_heads", None)
    grouped = isinstance(kv_heads, int) and isinstance(attn_heads, int) and kv_heads < attn_heads
    sizes: dict[str, Any] = {
        "hidden_size": TWIN_HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1 if grouped else heads,
        "head_dim": TWIN_HIDDEN // heads,
        "vocab_size": TWIN_VOCAB,
        "vocab_size_per_layer_input": TWIN_VOCAB,
        "hidden_size_per_layer_input": TWIN_HIDDEN,
        "laurel_rank": TWIN_HIDDEN,
        "moe_intermediate_size": TWIN_HIDDEN,
        "num_local_experts": 4,
        "num_experts": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 64,
    }
    for key, value in sizes.items():
        if getattr(text, key, None) is not None:
            setattr(text, key, value)
    inter = getattr(text, "intermediate_size", None)
    if isinstance(inter, list):
        text.intermediate_size = [2 * TWIN_HIDDEN] * layers
    elif inter is not None:
        text.intermediate_size = 2 * TWIN_HIDDEN
    types = getattr(text, "layer_types", None)
    if isinstance(types, list) and types:
        kinds = list(dict.fromkeys(types))  # keep every kind of layer the real model has
        text.layer_types = [kinds[i % len(kinds)] for i in range(layers)]
    if getattr(text, "num_kv_shared_layers", 0):
        text.num_kv_shared_layers = layers // 2
    pattern = getattr(text, "activation_sparsity_pattern", None)
    if isinstance(pattern, list):
        text.activation_sparsity_pattern = [pattern[i] if i < len(pattern) else 0.0 for i in range(layers)]
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value >= TWIN_VOCAB:
            setattr(text, key, 0)


def twin_config(config: Any) -> Any:
    """A shrunk copy of `config`: same architecture and module layout, tiny dimensions."""
    twin = copy.deepcopy(config)
    text = twin.get_text_config() if hasattr(twin, "get_text_config") else twin
    _shrink_text_config(text)
    audio = getattr(twin, "audio_config", None)
    if audio is not None and type(audio).__name__ == "Gemma3nAudioConfig":
        audio.hidden_size = TWIN_HIDDEN
        audio.input_feat_size = 32
        audio.conf_num_hidden_layers = 1
        audio.conf_num_attention_heads = 2
        audio.sscp_conv_channel_size = [32, 32]
    vision = getattr(twin, "vision_config", None)
    if vision is not None and hasattr(vision, "hidden_size"):
        vision.hidden_size = TWIN_HIDDEN
    return twin


def build_twin(config: Any, out: Path) -> None:
    """Instantiate the twin of `config` with random weights and save it to `out`."""
    import torch

    from worker.train.recipes.base import instantiate_on_meta
    from worker.train.recipes.gemma3n import timm_free_vision_tower

    twin = twin_config(config)
    cls = type(instantiate_on_meta(twin))
    with torch.random.fork_rng(devices=[]), timm_free_vision_tower(force=True):
        torch.manual_seed(0)
        model = cls._from_config(twin, dtype=torch.float32)
    model.save_pretrained(out)


# ---------------------------------------------------------------------------------------------- one step


def _train_one_step(model: Any, device: str) -> list[str]:
    """Forward, backward and one optimizer step; return names of LoRA modules that got no gradient."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TWIN_VOCAB, (TWIN_BATCH, TWIN_SEQ), generator=gen).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    loss = out.loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the twin's loss is {loss.item()} on its first step")
    loss.backward()
    starved = sorted(
        {n.rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    )
    opt.step()
    opt.zero_grad(set_to_none=True)
    # An eval forward then a second training step: catches layers that change state between modes.
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    model.train()
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    return starved


# ---------------------------------------------------------------------------------------------- locating


def _strip(name: str) -> str:
    name = name.removeprefix(PEFT_PREFIX)
    return re.sub(r"\.(base_layer|original_module|modules_to_save\.default)(?=\.|$)", "", name)


def module_frames(exc: BaseException, model: Any) -> list[str]:
    """Names of the model's modules whose methods appear in the failure's traceback, innermost first."""
    by_id = {id(m): n for n, m in model.named_modules()}
    found: list[str] = []
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in by_id:
            found.append(by_id[id(owner)])
    found.reverse()
    return found


def _is_packed(module: Any, qtypes: tuple[type, ...]) -> bool:
    """A bitsandbytes layer, or a LoRA wrapper around one."""
    return isinstance(module, qtypes) or isinstance(getattr(module, "base_layer", None), qtypes)


def culprits(
    exc: BaseException, model: Any, last_packed: str | None = None
) -> tuple[str, list[str], list[str]]:
    """(what failed, its module names, the packed layers to keep) for a failed step; empty if unknown.

    Walks outward from the innermost module frame of the traceback:
    - a packed layer that failed itself → that layer's role (the same name in every block);
    - a module whose own code failed → the packed layers it owns directly, in every module of its class
      (AltUp clamps and reads its own Linears; Gemma 3n's text model scales its per-layer projection's
      output in place). Layers nested deeper belong to submodules with their own frames.
    If no frame names a module (a failure inside autograd), the packed layer that ran last is kept.
    """
    modules = dict(model.named_modules())
    qtypes = quantized_layer_types()
    packed_names = list(dict.fromkeys(_strip(n) for n, m in modules.items() if isinstance(m, qtypes)))

    def role_of(clean: str) -> list[str]:
        role = re.compile(generalize_names([clean])[0])
        return [q for q in packed_names if role.fullmatch(q)]

    for name in module_frames(exc, model):
        module = modules[name]
        if _is_packed(module, qtypes):
            clean = _strip(name)
            return clean.rsplit(".", 1)[-1], [clean], role_of(clean)
        same_kind = [n for n, m in modules.items() if type(m) is type(module)]
        owned = [
            _strip(f"{inst}.{child_name}" if inst else child_name)
            for inst in same_kind
            for child_name, child in modules[inst].named_children()
            if _is_packed(child, qtypes)
        ]
        if owned:
            return type(module).__name__, [_strip(n) for n in same_kind], list(dict.fromkeys(owned))
    if last_packed:
        clean = _strip(last_packed)
        return clean.rsplit(".", 1)[-1], [clean], role_of(clean)
    return "", [], []


def patterns_for(packed: Sequence[str], current: Sequence[str]) -> list[str]:
    """New skip patterns that keep every layer in `packed`, generalised over block indices."""
    new = [p for p in generalize_names(packed) if p not in current]
    if all(pattern_keeps(q, [*current, *new]) for q in packed):
        return new
    return [re.escape(q) for q in packed if not pattern_keeps(q, current)]  # exact names as a last resort


@contextlib.contextmanager
def record_last_packed(model: Any) -> Iterator[list[str]]:
    """While active, the yielded list holds the name of the packed layer whose forward finished last."""
    qtypes = quantized_layer_types()
    last: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: Any, args: Any, output: Any) -> None:
            last[:] = [name]

        return record

    packed: list[tuple[str, Any]] = [(n, m) for n, m in model.named_modules() if isinstance(m, qtypes)]
    handles = [m.register_forward_hook(hook(n)) for n, m in packed]
    try:
        yield last
    finally:
        for handle in handles:
            handle.remove()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not text:  # a bare assert: say where it fired instead
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            text = f"raised in {Path(last.filename).name}, {last.name}()"
    return f"{type(exc).__name__}: {text}"[:300]


# ---------------------------------------------------------------------------------------------- entry


def run_preflight(
    cfg: JobConfig,
    *,
    report: Report | None = None,
    max_attempts: int = 4,
    device: str = "cpu",
    keep_override: Sequence[str] | None = None,
) -> PreflightResult:
    """Train one step on a tiny twin of cfg.model under cfg's quantization and LoRA; find modules to keep.

    Raises ModelLoadError when the model itself cannot be found (same errors as load_for_training).
    `keep_override` replaces the recipe's skip patterns (used to show preflight repairing a naive list).
    `device` runs the twin there (default CPU: seconds, and no GPU memory taken before the real load).
    """
    started = time.monotonic()
    source = resolve_model_source(cfg.model.name, cfg.model.revision)
    config = load_model_config(source, cfg.model.trust_remote_code)
    notes: list[str] = []
    extra: list[str] = []
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="tuneboard-twin-"))
    threads = torch.get_num_threads()
    # One thread is plenty for the twin, and on a busy CPU more threads spin-wait each other: measured
    # 0.7 s with one thread against 6-23 s with two while other processes shared the two cores.
    torch.set_num_threads(1)
    try:
        try:
            build_twin(config, tmp)
        except Exception as exc:  # an architecture we cannot shrink: say so, do not block the run
            result = PreflightResult(
                ok=True,
                kept_in_full_precision=[],
                notes=[f"Preflight skipped: could not build a tiny twin of this model ({_short(exc)})."],
                summary="Preflight skipped: this architecture could not be shrunk for a quick check.",
                seconds=time.monotonic() - started,
            )
            _send(report, result)
            return result
        twin_source = ModelSource(str(tmp), None, False, True, force_vision_stub=True)
        twin_cfg = cfg.model_copy(deep=True)
        twin_config_loaded = load_model_config(twin_source)
        last_error = ""
        for attempt in range(1, max_attempts + 1):
            loaded = None
            last_packed: list[str] = []
            try:
                loaded = load_source_for_training(
                    twin_cfg,
                    twin_source,
                    twin_config_loaded,
                    device=device,
                    extra_keep=extra,
                    keep_override=keep_override,
                    with_tokenizer=False,
                    allow_compile=False,
                )
                with record_last_packed(loaded.model) as last_packed:
                    starved = _train_one_step(loaded.model, device)
            except ModelLoadError as exc:
                # modules_to_save on a packed module and the like: the loader says what to change
                last_error = str(exc)
                break
            except Exception as exc:
                last_error = _short(exc)
                if loaded is None:
                    break  # the twin did not even load: nothing to locate
                last = last_packed[0] if last_packed else None
                kind, names, packed = culprits(exc, loaded.model, last)
                if not packed:
                    break
                new = patterns_for(packed, loaded.kept_in_full_precision)
                if not new:
                    break
                extra.extend(new)
                where = ", ".join(sorted({_group(q) for q in packed}))
                notes.append(
                    f"{kind} (e.g. {names[0]}) failed with quantized weights — {last_error} — so "
                    f"{len(packed)} Linear layer(s) are kept in full precision: {where}."
                )
                continue
            seconds = time.monotonic() - started
            if starved:
                notes.append(
                    f"{len(starved)} adapted module(s) got no gradient (e.g. {starved[0]}): the model reads "
                    "their weights directly, bypassing the adapter; they will not learn."
                )
            kept = list(loaded.kept_in_full_precision)
            result = PreflightResult(
                ok=True,
                kept_in_full_precision=kept,
                notes=[*notes, *(n for n in loaded.notes if not n.startswith("Preflight asked"))],
                summary=_summary_ok(cfg, loaded, extra, attempt, seconds),
                seconds=seconds,
                extra_keep=list(extra),
            )
            _send(report, result)
            return result
        seconds = time.monotonic() - started
        result = PreflightResult(
            ok=False,
            kept_in_full_precision=[],
            notes=notes,
            summary=(
                f"Preflight failed: a tiny twin of {cfg.model.name} could not train one step under "
                f"{cfg.quantization.method}: {last_error}. Try quantization.method 'none', or add the "
                "failing module to quantization.keep_in_full_precision."
            ),
            seconds=seconds,
            extra_keep=list(extra),
        )
        _send(report, result)
        return result
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
        if device.startswith("cuda"):  # hand the twin's memory back before the real model loads
            import gc

            gc.collect()
            torch.cuda.empty_cache()


def _group(name: str) -> str:
    """A readable family name: a tower's layers collapse to the tower, layer indices to N."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in TOWER_NAMES:
            return ".".join(parts[: i + 1])
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def _summary_ok(cfg: JobConfig, loaded: Any, extra: Sequence[str], attempt: int, seconds: float) -> str:
    groups = sorted({_group(n) for n in loaded.kept_module_names})
    more = " …" if len(groups) > 8 else ""
    what = f"kept in full precision: {', '.join(groups[:8])}{more}" if groups else ""
    head = (
        f"Preflight passed in {seconds:.1f} s: a tiny twin of {loaded.recipe.architecture} trained a step "
        f"under {cfg.quantization.method} + LoRA"
    )
    if extra:
        head += f" after {attempt - 1} fix(es) (it found modules that break when quantized)"
    return f"{head}; {what}." if what else f"{head}."


def _send(report: Report | None, result: PreflightResult) -> None:
    if report is not None:
        report("preflight", result.payload())
