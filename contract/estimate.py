"""A torch-free memory estimate for a job config, shown next to the "new job" form.

Deliberately rough (±30%): it tells a user whether a run fits on their GPU before they spend time on
it, from facts in `contract.catalog` alone. The terms follow how QLoRA memory actually splits:

- frozen base weights: the quantizable share packed to 4 (or 8) bits, the rest in bf16 (fp32 on CPU);
- the LoRA adapter: fp32 weights + gradients + optimizer state (8-bit Adam keeps ~2 bytes/param);
- activations kept for backward: one hidden-state copy per layer with gradient checkpointing,
  ~17 per layer without (attention via sdpa/flash, so no seq² score matrices);
- the logits: batch × seq × vocab in fp32, once for the forward and once for its gradient
  (measured on Gemma 3n: with a 262k vocabulary this is often the largest single term).

On a GPU the worker's defaults change three terms (bench/README.md has the measurements): Gemma 3n's
per-layer embedding table stays in CPU memory (`worker/train/speed/host_tables.py`); the loss is a fused
linear + cross-entropy that never holds the logits (`worker/train/speed/fused_loss.py`, when liger-kernel is
installed); and checkpointed layer inputs wait in CPU memory (`worker/train/speed/offload.py`), so only the
layer being recomputed and the next one's input stay on the GPU. For Gemma 3n the step's working set is then
calibrated on the H100: 1.81 GB at 4 × 512 and 7.24 GB at 16 × 512 on E2B dims, i.e. ~216 hidden-state copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.catalog import ModelInfo, model_info
from contract.config import JobConfig, resolve_optimizer

GB = 1024**3

# Bytes per parameter of a packed base weight, including its quantization constants.
# 4-bit: 0.5 byte + one fp32 absmax per 64 weights (0.0625), which double quant shrinks to ~0.127 bit.
_QUANT_BYTES = {"nf4": 0.5625, "fp4": 0.5625, "int8": 1.0 + 4 / 4096}
_DOUBLE_QUANT_BYTES = 0.5 + 0.127 / 8
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# LoRA shapes per projection, in units of r × hidden (MLP projections assumed 4 × hidden wide)
_PROJECTION_WIDTH = {
    "q_proj": 2.0,
    "k_proj": 2.0,
    "v_proj": 2.0,
    "o_proj": 2.0,
    "gate_proj": 5.0,
    "up_proj": 5.0,
    "down_proj": 5.0,
}
# per-layer activation copies of the hidden state a transformer layer keeps for backward (sdpa attention)
_ACTIVATIONS_PER_LAYER = 17
# Gemma 3n on a GPU with the worker's defaults (fused loss, offloaded checkpoint inputs): what one step
# allocates, in hidden-state copies (batch × seq × hidden × 2 bytes), measured on the H100 (module docstring)
_GEMMA3N_GPU_STEP_COPIES = 216
# architectures whose loss the worker fuses on a GPU (worker/train/speed/fused_loss.py SUPPORTED_MODEL_TYPES)
_FUSED_LOSS_ARCHITECTURES = (
    "Gemma3n",
    "Gemma3",
    "Gemma2",
    "Gemma",
    "Llama",
    "Mistral",
    "Qwen2",
    "Qwen3",
    "Phi3",
)
# CUDA context, cuBLAS workspaces and allocator slack, per GPU
_CUDA_OVERHEAD_GB = 0.5
# the training process itself on CPU: Python, torch, transformers (measured ~0.55 GB RSS for tiny models)
_CPU_RUNTIME_GB = 0.5


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one training process: a total, its parts (GB) and plain-words notes."""

    total_gb: float | None  # None when the model's size is unknown
    breakdown: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    device: str = "GPU"  # "GPU" (per GPU) or "CPU" (host memory)
    model_known: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of POST /api/estimate."""
        return {
            "total_gb": self.total_gb,
            "breakdown": dict(self.breakdown),
            "notes": list(self.notes),
            "device": self.device,
            "model_known": self.model_known,
        }


def _lora_params(info: ModelInfo, config: JobConfig) -> tuple[float, list[str]]:
    """Trainable adapter parameters, and notes about module names we could not size."""
    r, h, layers = config.lora.r, info.hidden_size, info.num_layers
    targets = config.lora.target_modules
    notes: list[str] = []
    if targets == "auto":
        width = sum(_PROJECTION_WIDTH.values())
    else:
        width = 0.0
        unsized = []
        for name in targets:
            short = name.rsplit(".", 1)[-1]
            if short in _PROJECTION_WIDTH:
                width += _PROJECTION_WIDTH[short]
            else:
                width += 2.0  # a square hidden × hidden projection is the common case
                unsized.append(name)
        if unsized:
            notes.append(f"Sized {', '.join(unsized)} as hidden × hidden projections (not a standard name).")
    return r * h * layers * width, notes


def _weights_bytes(info: ModelInfo, config: JobConfig, full_bytes: int) -> tuple[float, str]:
    """Frozen base weights in bytes and a label saying how they are stored."""
    params = info.params_billion * 1e9
    method = config.quantization.method
    if method == "none":
        return params * full_bytes, f"base weights ({_dtype_name(full_bytes)}, not quantized)"
    per_param = _QUANT_BYTES[method]
    if method in ("nf4", "fp4") and config.quantization.double_quant:
        per_param = _DOUBLE_QUANT_BYTES
    quantized = params * info.quantizable_fraction
    rest = params - quantized
    label = (
        f"base weights ({method} for {info.quantizable_fraction:.0%}, {_dtype_name(full_bytes)} for the rest)"
    )
    return quantized * per_param + rest * full_bytes, label


def _dtype_name(nbytes: int) -> str:
    return "fp32" if nbytes == 4 else "bf16"


def estimate_memory(config: JobConfig) -> MemoryEstimate:
    """Estimate the peak memory of training `config` (per GPU, or host RAM for CPU jobs)."""
    on_gpu = config.resources.gpus > 0
    device = "GPU" if on_gpu else "CPU"
    info = model_info(config.model.name)
    if info is None:
        return MemoryEstimate(
            total_gb=None,
            notes=[
                f"unknown size: {config.model.name!r} is not in the catalogue, so its memory cannot be "
                "estimated here; pick a preset or a known hub model to see an estimate."
            ],
            device=device,
            model_known=False,
        )

    dtype = config.model.dtype
    if dtype == "auto":
        full_bytes = 2 if on_gpu else 4  # what the worker picks: bf16 on GPU, fp32 on CPU
    else:
        full_bytes = _DTYPE_BYTES[dtype]

    t = config.training
    batch, seq = t.batch_size, t.max_seq_len
    notes: list[str] = []

    weights, weights_label = _weights_bytes(info, config, full_bytes)
    if on_gpu and info.host_table_params:
        weights -= info.host_table_params * full_bytes
        notes.append(
            f"The per-layer embedding table ({info.host_table_params * full_bytes / GB:.1f} GB) stays in CPU "
            "memory during a GPU run; only each batch's rows are copied over."
        )

    lora_params, lora_notes = _lora_params(info, config)
    notes.extend(lora_notes)
    optimizer = resolve_optimizer(t.optimizer, on_gpu, int(lora_params))
    # two Adam moments: 1 byte each in 8-bit optimizers, 4 bytes each in plain fp32 AdamW
    state_bytes = 8 if optimizer == "adamw_torch" else 2
    adapter = lora_params * (4 + 4 + state_bytes)

    hidden_copy = batch * seq * info.hidden_size * full_bytes
    gemma3n = "Gemma3n" in info.architecture
    copies_per_layer = 4 if gemma3n else 1  # AltUp carries 4 hidden states
    fused = on_gpu and info.architecture.startswith(_FUSED_LOSS_ARCHITECTURES)
    if t.gradient_checkpointing and on_gpu and fused and gemma3n:
        activations = hidden_copy * _GEMMA3N_GPU_STEP_COPIES
        act_label = "activations and loss chunks (checkpointed, layer inputs in CPU memory)"
    elif t.gradient_checkpointing and on_gpu:
        # the offload keeps two layers' inputs on the GPU (the one recomputing, the next one prefetched)
        activations = hidden_copy * (2 * copies_per_layer + _ACTIVATIONS_PER_LAYER)
        act_label = "activations (checkpointed, layer inputs in CPU memory)"
    elif t.gradient_checkpointing:
        activations = hidden_copy * (info.num_layers * copies_per_layer + _ACTIVATIONS_PER_LAYER)
        act_label = "activations (checkpointed)"
    else:
        activations = hidden_copy * info.num_layers * (_ACTIVATIONS_PER_LAYER + copies_per_layer)
        act_label = "activations (no checkpointing)"
        notes.append("Gradient checkpointing is off: activations grow with every layer.")

    logits = 2 * batch * seq * info.vocab_size * 4
    if fused:
        notes.append(
            f"The loss is fused, so the {logits / GB:.1f} GB of fp32 logits are never stored; this needs "
            "liger-kernel on the GPU machine (pip install 'tuneboard[train,gpu]')."
        )
        logits = 0 if gemma3n else 4 * hidden_copy  # Gemma 3n's chunks are inside its calibrated term

    breakdown = {
        weights_label: weights / GB,
        f"LoRA adapter ({lora_params / 1e6:.2f} M params) + grads + {optimizer}": adapter / GB,
        act_label: activations / GB,
    }
    if logits:
        key = "loss chunks (fused)" if fused else "logits (fp32, forward + gradient)"
        breakdown[key] = logits / GB
    if on_gpu:
        breakdown["CUDA context and allocator slack"] = _CUDA_OVERHEAD_GB
    else:
        breakdown["Python + torch runtime"] = _CPU_RUNTIME_GB
    total = sum(breakdown.values())

    if logits > 0.3 * total * GB:
        notes.append(
            "The logits are a large share: a smaller batch × max_seq_len, or a fused linear + "
            "cross-entropy loss, saves the most."
        )
    if t.packing:
        notes.append("Packing fills every row to max_seq_len, so the estimate is close to the peak.")
    else:
        notes.append("Rows shorter than max_seq_len use less than this peak.")
    if on_gpu and t.probes_micro_batch(one_gpu=config.resources.gpus == 1):
        notes.append(
            f"Auto micro-batch is on: a probe picks the largest micro-batch that fits (up to "
            f"{t.batch_size * t.grad_accum}); this estimate is for batch_size {t.batch_size}."
        )
    if on_gpu:
        notes.append(f"Per GPU; {config.resources.gpus} GPU(s) requested.")
    else:
        notes.append("CPU job: this is host memory (RAM), not VRAM.")
    notes.extend(info.notes)
    return MemoryEstimate(total_gb=total, breakdown=breakdown, notes=notes, device=device)
