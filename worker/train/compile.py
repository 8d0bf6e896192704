"""torch.compile for the decoder layers, inside gradient checkpointing.

Why: a QLoRA step on a model like Gemma 3n is thousands of small kernels per layer (AltUp's four hidden-state
copies, Laurel, per-layer inputs, RMSNorms in fp32, LoRA's extra matmuls, 4-bit dequantization). Eager PyTorch
launches each one from Python, so at small micro-batches the GPU waits for the CPU, and at large ones it spends
its time in memory-bound elementwise kernels. Compiling each layer fuses the elementwise work and removes most
of the launches.

How: transformers checkpoints a layer by calling `_gradient_checkpointing_func(partial(forward, layer, ...),
*args)`. The wrapper installed here swaps `forward` for its compiled version before the checkpoint runs, so
the checkpoint itself (non-reentrant, with `worker.train.offload`'s hooks around it) stays eager — the part
of it that has side effects (Gemma 3n's KV sharing writes a dict that later layers read, which a compiled
checkpoint region refuses) is replayed by eager checkpointing exactly as without compilation. One compiled
function serves every layer of a class: layers differ only in a few variants (sliding or full attention,
KV-shared or not), each compiled once.

`TUNEBOARD_COMPILE` chooses: "1" on, "0" off, unset or "auto": `COMPILE_ON_CUDA_BY_DEFAULT` on CUDA, off on
CPU (compiling the tiny CPU presets costs more than it saves). `TUNEBOARD_COMPILE_BACKEND` picks the
backend (default inductor; tests use aot_eager, which needs no C compiler). The seconds spent in calls that
compiled are counted in `LayerCompiler.compile_s`, so the first steps' cost is reported apart from the
steady-state speed.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

COMPILE_ENV = "TUNEBOARD_COMPILE"
BACKEND_ENV = "TUNEBOARD_COMPILE_BACKEND"
COMPILE_ON_CUDA_BY_DEFAULT = False  # set from the H100 measurement in bench/README.md
# Each distinct layer variant (and each new batch shape until dynamic shapes kick in) is one entry.
CACHE_SIZE_LIMIT = 64


def compile_wanted(device: str) -> bool:
    """Whether the decoder layers are compiled for a run on `device` (env override, else the default)."""
    value = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    if value not in ("", "auto"):
        raise ValueError(f"{COMPILE_ENV}={value!r} is not understood; set it to 0, 1 or auto")
    return device.startswith("cuda") and COMPILE_ON_CUDA_BY_DEFAULT


def _is_strided_view(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and not value.is_contiguous()


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class LayerCompiler:
    """Compiles each checkpointed layer's forward once per function and keeps count of compile time."""

    def __init__(self, backend: str | None = None) -> None:
        import torch

        self.backend = backend or os.environ.get(BACKEND_ENV, "inductor")
        self._compiled: dict[Any, Any] = {}
        self.compile_s = 0.0  # wall time of the calls during which new graphs were compiled
        self.graphs = 0
        limit = torch._dynamo.config.cache_size_limit
        torch._dynamo.config.cache_size_limit = max(limit, CACHE_SIZE_LIMIT)

    def compiled(self, function: Any) -> Any:
        """The compiled form of `function` (a partial over a layer's forward is rebuilt around it)."""
        import torch

        if not isinstance(function, functools.partial):
            return function  # not the shape transformers uses; leave it eager rather than guess
        inner = function.func
        fast = self._compiled.get(inner)
        if fast is None:
            fast = self._compiled[inner] = torch.compile(inner, backend=self.backend)
        return functools.partial(fast, *function.args, **function.keywords)

    def wrap(self, checkpoint_fn: Any) -> Any:
        """`checkpoint_fn` running the compiled layer forward; counts the time of calls that compiled."""

        @functools.wraps(checkpoint_fn)
        def run(function: Any, *args: Any, **kwargs: Any) -> Any:
            # Strided views (Gemma 3n's per-layer input is a slice of a [batch, seq, layers, dim] tensor) come
            # back contiguous from the CPU offload; the compiled backward checks strides, so the forward and the
            # recomputation must see the same layout.
            args = tuple(a.contiguous() if _is_strided_view(a) else a for a in args)
            before = _graph_count()
            start = time.perf_counter()
            out = checkpoint_fn(self.compiled(function), *args, **kwargs)
            after = _graph_count()
            if after != before:
                self.compile_s += time.perf_counter() - start
                self.graphs += after - before
            return out

        return run


def compile_checkpointed_layers(model: Any, backend: str | None = None) -> LayerCompiler | None:
    """Compile every checkpointed layer of `model`; None when no layer is checkpointed."""
    compiler = LayerCompiler(backend)
    wrapped = 0
    for module in model.modules():
        fn = getattr(module, "_gradient_checkpointing_func", None)
        if fn is None or not getattr(module, "gradient_checkpointing", False):
            continue
        if getattr(fn, "_tuneboard_compiled", False):
            continue
        new = compiler.wrap(fn)
        new._tuneboard_compiled = True  # type: ignore[attr-defined]
        module._gradient_checkpointing_func = new
        wrapped += 1
    return compiler if wrapped else None
