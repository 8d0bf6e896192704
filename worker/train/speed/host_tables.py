"""Keep large frozen lookup tables in CPU memory and send the GPU only the rows a batch uses.

Why: Gemma 3n's per-layer embeddings (`embed_tokens_per_layer`) are a 262,144 × (layers · 256) table — 4.03 GB
in bf16 on E2B dims, two thirds of the loaded 4-bit model — yet a micro-batch of 16 × 512 tokens reads 126 MB
of it, and LoRA never trains it. On the CPU the table costs host RAM only; each forward gathers the batch's
rows there into pinned memory and copies them to the GPU (after a small device-to-host copy of the token
ids, so the forward waits for the ids to exist; measured cost in bench/README.md).

Which tables: frozen `nn.Embedding`s of at least `MIN_TABLE_BYTES` that are neither the input embeddings nor
tied to the output head (the head needs its weight on the GPU for the matmul). The module stays where it is
(state-dict keys unchanged); only its weight moves and its forward is rebound.

`speed.host_tables` chooses: on, off, or auto: `HOST_TABLES_ON_CUDA_BY_DEFAULT` on CUDA,
off on CPU. On a CPU-only run the table is already in host memory, so the rebound forward takes the stock
path (tests reach the gather path with ids that report another device).
"""

from __future__ import annotations

from typing import Any

from worker.train.rebind import is_rebound, rebind
from worker.train.speed.switches import lever_on

HOST_TABLES_ON_CUDA_BY_DEFAULT = True  # set from the H100 measurement in bench/README.md
MIN_TABLE_BYTES = 256 << 20


def host_tables_wanted(device: str, setting: str = "auto") -> bool:
    """Whether big frozen lookup tables stay on the host for a run on `device` (`setting`, else default)."""
    return lever_on(setting, default=device.startswith("cuda") and HOST_TABLES_ON_CUDA_BY_DEFAULT)


def host_table_candidates(model: Any, min_bytes: int = MIN_TABLE_BYTES) -> list[str]:
    """Names of the frozen embedding tables that can live on the host (see the module docstring)."""
    import torch

    keep_ids: set[int] = set()
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in (inputs, head):
        weight = getattr(module, "weight", None)
        if weight is not None:
            keep_ids.add(id(weight))
    names = []
    for name, module in model.named_modules():
        if type(module).__name__ == "HostTable" or not isinstance(module, torch.nn.Embedding):
            continue
        weight = module.weight
        if id(weight) in keep_ids or weight.requires_grad:
            continue
        if weight.numel() * weight.element_size() >= min_bytes:
            names.append(name)
    return names


def _host_forward(self: Any, input_ids: Any) -> Any:
    """Embedding forward with the table on the host: gather rows on the CPU, copy them to the ids' device."""
    import torch
    import torch.nn.functional as F

    weight = self.weight
    if weight.device == input_ids.device:  # moved back (e.g. model.to(...)): behave as the stock module
        return self._tuneboard_stock_forward(input_ids)
    ids = input_ids.to("cpu").reshape(-1)
    pin = input_ids.is_cuda
    rows = torch.empty((ids.numel(), weight.shape[1]), dtype=weight.dtype, pin_memory=pin)
    torch.index_select(weight, 0, ids, out=rows)
    out = rows.to(input_ids.device, non_blocking=pin).view(*input_ids.shape, weight.shape[1])
    if getattr(self, "max_norm", None) is not None:  # never the case for the tables this serves
        return F.embedding(input_ids, weight.to(input_ids.device))
    scale = getattr(self, "embed_scale", None)  # Gemma's scaled embeddings multiply by a constant
    if scale is not None:
        out = out * scale.to(device=out.device, dtype=out.dtype)
    return out


def keep_tables_on_host(model: Any, names: list[str] | None = None) -> list[str]:
    """Move the tables `names` (default: `host_table_candidates`) to CPU memory; returns the names moved.

    The stock forward of Gemma's scaled embedding is `embedding(ids) * embed_scale`; `_host_forward` does the
    same on the gathered rows. Tables whose class does more than that are left alone.
    """
    import torch

    modules = dict(model.named_modules())
    moved = []
    for name in names if names is not None else host_table_candidates(model):
        module = modules[name]
        plain = type(module).forward is torch.nn.Embedding.forward
        scaled = type(module).__name__.endswith("ScaledWordEmbedding") and hasattr(module, "embed_scale")
        if not plain and not scaled:
            continue
        if is_rebound(module, "forward"):
            continue
        module.weight.data = module.weight.data.to("cpu")
        rebind(module, "forward", _host_forward)
        moved.append(name)
    return moved
