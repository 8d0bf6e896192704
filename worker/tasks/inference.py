"""Load a finished run's base model and adapter for inference or merging (torch, transformers, peft)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.config import JobConfig, load_config_file
from contract.rundir import RunDir

QUANTIZATION_FILE = "tuneboard_quantization.json"


class TaskError(Exception):
    """A task cannot run on this run directory; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    """How the adapter was trained: the job's config as the app stored it, plus the adapter's weights."""

    adapter: Path
    cfg: JobConfig  # from the app's task input (the job's stored config), never from the run directory
    method: str  # quantization method of the frozen base: nf4 | fp4 | int8 | none (from cfg)
    dtype: str  # torch dtype name of the non-quantized weights during training
    skip_modules: list[str]  # llm_int8_skip_modules used while training


# the run directory is worker-writable: a dtype read from it is only ever one of these names
TRAINING_DTYPES = frozenset({"float32", "float16", "bfloat16"})


def adapter_info(run_dir: Path, config_path: Path) -> AdapterInfo:
    """The adapter of RUN_DIR with the job config of `config_path` (the app's task input); TaskError if not.

    Everything that decides which code and which weights get loaded (model name, revision,
    trust_remote_code, quantization) comes from `config_path`, which the app writes from its database.
    RUN_DIR/adapter is written by the worker (or uploaded with its token), so its tuneboard_config.json is
    never read here, and tuneboard_quantization.json only supplies the training dtype (one of
    TRAINING_DTYPES) and the names of the modules kept in full precision.
    """
    adapter = RunDir(Path(run_dir)).adapter
    quant_path = adapter / QUANTIZATION_FILE
    if not (adapter / "adapter_config.json").is_file() or not quant_path.is_file():
        raise TaskError(
            f"{adapter} holds no finished adapter (adapter_config.json or {QUANTIZATION_FILE} is missing); "
            "these tasks need a job that succeeded"
        )
    try:
        cfg = load_config_file(config_path)
    except ValueError as exc:  # ConfigError: unreadable or invalid
        raise TaskError(f"cannot read the task input {config_path}: {exc}") from exc
    try:
        quant = json.loads(quant_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TaskError(f"cannot read the adapter's settings in {adapter}: {exc}") from exc
    quant = quant if isinstance(quant, dict) else {}
    dtype = quant.get("dtype")
    skip = quant.get("llm_int8_skip_modules")
    return AdapterInfo(
        adapter=adapter,
        cfg=cfg,
        method=cfg.quantization.method,
        dtype=dtype if dtype in TRAINING_DTYPES else "float32",
        skip_modules=[m for m in skip if isinstance(m, str)] if isinstance(skip, list) else [],
    )


def pick_device() -> str:
    """cuda when a GPU is visible (the app sets CUDA_VISIBLE_DEVICES for tasks), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(info: AdapterInfo, *, device: str, quantized: bool) -> Any:
    """The base model as it was trained (`quantized`) or in full precision (for merging)."""
    import torch

    from worker.train.cpu import disable_cpu_weight_repacking
    from worker.train.loading import bnb_config, load_model_config, resolve_model_source
    from worker.train.recipes.base import causal_lm_class
    from worker.train.recipes.gemma3n import timm_free_vision_tower

    cfg = info.cfg
    source = resolve_model_source(cfg.model.name, cfg.model.revision)
    config = load_model_config(source, cfg.model.trust_remote_code)
    dtype = getattr(torch, info.dtype, torch.float32)
    if dtype == torch.bfloat16 and device == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    quantization = bnb_config(cfg, dtype, info.skip_modules) if quantized and info.method != "none" else None
    kwargs: dict[str, Any] = {}
    if cfg.model.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    # presets were saved with the stand-in vision tower; the same context the training loader uses
    with timm_free_vision_tower(force=source.force_vision_stub):
        model = causal_lm_class(config).from_pretrained(
            source.location,
            revision=source.revision,
            quantization_config=quantization,
            dtype=dtype,
            device_map={"": device},
            trust_remote_code=cfg.model.trust_remote_code,
            **kwargs,
        )
    if quantization is not None and device == "cpu":
        # the training worker runs with repacking off (worker/train/cpu.py); same kernels, same numbers
        disable_cpu_weight_repacking(model)
    model.eval()
    return model


def load_tokenizer(info: AdapterInfo) -> Any:
    """The tokenizer saved with the adapter (chat template and padding as during training)."""
    from transformers import AutoTokenizer

    # saved by the worker: its files may name custom tokenizer code, which is never trusted
    tok = AutoTokenizer.from_pretrained(str(info.adapter), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_adapter(base: Any, info: AdapterInfo) -> Any:
    """The base wrapped with the trained LoRA adapter (plain PEFT loading)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(info.adapter))
    model.eval()
    return model
