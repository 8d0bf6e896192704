"""Load a finished run's base model and adapter for inference or merging (torch, transformers, peft)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import JobConfig, load_config_file
from worker.protocol import RunDir

CONFIG_FILE = "tuneboard_config.json"
QUANTIZATION_FILE = "tuneboard_quantization.json"


class TaskError(Exception):
    """A task cannot run on this run directory; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    """What the adapter directory says about how it was trained."""

    adapter: Path
    cfg: JobConfig
    method: str  # quantization method of the frozen base: nf4 | fp4 | int8 | none
    dtype: str  # torch dtype name of the non-quantized weights during training
    skip_modules: list[str]  # llm_int8_skip_modules used while training


def adapter_info(run_dir: Path) -> AdapterInfo:
    """Read RUN_DIR/adapter's config and quantization files (TaskError when the adapter is missing)."""
    adapter = RunDir(Path(run_dir)).adapter
    config_path, quant_path = adapter / CONFIG_FILE, adapter / QUANTIZATION_FILE
    if not (adapter / "adapter_config.json").is_file() or not quant_path.is_file():
        raise TaskError(
            f"{adapter} holds no finished adapter (adapter_config.json or {QUANTIZATION_FILE} is missing); "
            "these tasks need a job that succeeded"
        )
    try:
        quant = json.loads(quant_path.read_text(encoding="utf-8"))
        cfg = load_config_file(config_path if config_path.is_file() else RunDir(Path(run_dir)).config)
    except (OSError, ValueError) as exc:
        raise TaskError(f"cannot read the adapter's settings in {adapter}: {exc}") from exc
    return AdapterInfo(
        adapter=adapter,
        cfg=cfg,
        method=str(quant.get("method", cfg.quantization.method)),
        dtype=str(quant.get("dtype", "float32")),
        skip_modules=list(quant.get("llm_int8_skip_modules") or []),
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

    tok = AutoTokenizer.from_pretrained(str(info.adapter))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_adapter(base: Any, info: AdapterInfo) -> Any:
    """The base wrapped with the trained LoRA adapter (plain PEFT loading)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(info.adapter))
    model.eval()
    return model
