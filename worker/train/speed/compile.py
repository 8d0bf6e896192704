"""torch.compile for the decoder layers, inside gradient checkpointing.

Why: a QLoRA step on Gemma 3n E2B dims is ~28,000 kernels (AltUp's four hidden-state copies, Laurel,
per-layer inputs, fp32 RMSNorms, LoRA's extra matmuls, 4-bit dequantization; measured with
`bench.speed --profile`). Eager PyTorch launches each from Python: at 4 × 512 the GPU was busy 30% of the
step, and at 16 × 512, where it is busy throughout, memory-bound elementwise kernels and copies took more
time than the matmuls. Compiling each layer fuses the elementwise work and removes most of the launches.

How: transformers checkpoints a layer by calling `_gradient_checkpointing_func(partial(forward, layer, ...),
*args)`. The wrapper installed here swaps `forward` for its compiled version before the checkpoint runs, so
the checkpoint itself (non-reentrant, with `worker.train.speed.offload`'s hooks around it) stays eager — the
part of it that has side effects (Gemma 3n's KV sharing writes a dict that later layers read, which a compiled
checkpoint region refuses) is replayed by eager checkpointing exactly as without compilation. One compiled
function serves every layer of a class: layers differ only in a few variants (sliding or full attention,
KV-shared or not), each compiled once.

`training.torch_compile` chooses ("on", "off", "auto"); "auto" compiles on CUDA for runs of at least
`COMPILE_MIN_STEPS` optimizer steps (or set by epochs): on Gemma 3n E2B dims the compile takes ~2.5 min and
saves ~1.2 s per step of 8192 tokens, so it pays off after ~130 steps (bench/README.md). On CPU "auto" stays
eager (compiling the tiny presets costs more than it saves). `speed.compile_backend` picks the
backend (default inductor; tests use aot_eager, which needs no C compiler), and `speed.compile_options` a
JSON object of inductor options for it (benchmarks try CUDA graphs, `{"triton.cudagraphs": true}`, and the
C++ launcher, `{"cpp_wrapper": true}`, this way). The run plan (`worker.train.speed.plan`) records all
three. The seconds spent in calls that compiled are counted in `LayerCompiler.compile_s`, so the first
steps' cost is reported apart from the steady-state speed.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

DEFAULT_BACKEND = "inductor"
COMPILE_ON_CUDA_BY_DEFAULT = True  # set from the H100 measurement in bench/README.md
COMPILE_MIN_STEPS = 200
# Each distinct layer variant (and each new batch shape until dynamic shapes kick in) is one entry.
CACHE_SIZE_LIMIT = 64


def compile_wanted(
    device: str, setting: str = "auto", max_steps: int | None = None, world_size: int = 1
) -> bool:
    """Whether the decoder layers are compiled for a run on `device`.

    `setting` (training.torch_compile) "on" / "off" decides; "auto" compiles on CUDA when the run is long
    enough for the compile time to pay off (`max_steps` None means the run is set by epochs).
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    long_enough = max_steps is None or max_steps >= COMPILE_MIN_STEPS
    # Measured on one GPU only: data-parallel runs stay eager unless asked.
    single = world_size <= 1
    return device.startswith("cuda") and COMPILE_ON_CUDA_BY_DEFAULT and long_enough and single


def compile_options(raw: str | None) -> dict[str, Any] | None:
    """Inductor options from `raw` (speed.compile_options, a JSON object), None when empty.

    A value that is not a JSON object is refused with a message naming the setting (the config schema
    checks it too; benchmarks pass theirs here directly).
    """
    if raw is None or not raw.strip():
        return None
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f'speed.compile_options is not valid JSON ({exc}); give an object such as {{"cpp_wrapper": true}}'
        ) from exc
    if not isinstance(options, dict):
        raise ValueError(f"speed.compile_options must be a JSON object of inductor options, not {raw!r}")
    return options


def _is_strided_view(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and not value.is_contiguous()


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class LayerCompiler:
    """Compiles each checkpointed layer's forward once per function and keeps count of compile time."""

    def __init__(self, backend: Any = None, options: dict[str, Any] | None = None) -> None:
        import torch

        self.backend = backend or DEFAULT_BACKEND
        self.options = options if self.backend == "inductor" else None
        self._compiled: dict[Any, Any] = {}
        self.compile_s = 0.0  # wall time of the calls during which new graphs were compiled
        self.graphs = 0
        limit = torch._dynamo.config.cache_size_limit
        torch._dynamo.config.cache_size_limit = max(limit, CACHE_SIZE_LIMIT)
        # A layer that cannot be compiled here (no Triton, an unsupported op) runs eagerly instead of failing
        # the job; `graphs` then stays 0 and the worker says so.
        torch._dynamo.config.suppress_errors = True

    def compiled(self, function: Any) -> Any:
        """The compiled form of `function` (a partial over a layer's forward is rebuilt around it)."""
        import torch

        if not isinstance(function, functools.partial):
            return function  # not the shape transformers uses; leave it eager rather than guess
        inner = function.func
        fast = self._compiled.get(inner)
        if fast is None:
            fast = self._compiled[inner] = torch.compile(inner, backend=self.backend, options=self.options)
        return functools.partial(fast, *function.args, **function.keywords)

    def wrap(self, checkpoint_fn: Any) -> Any:
        """`checkpoint_fn` running the compiled layer forward; counts the time of calls that compiled."""

        @functools.wraps(checkpoint_fn)
        def run(function: Any, *args: Any, **kwargs: Any) -> Any:
            # Strided views (Gemma 3n's per-layer input slices a [batch, seq, layers, dim] tensor) come back
            # contiguous from the CPU offload; the compiled backward checks strides (an assertion failed on
            # the H100 without this), so the forward and the recomputation must see the same layout.
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


def compile_checkpointed_layers(
    model: Any, backend: Any = None, options: dict[str, Any] | None = None
) -> LayerCompiler | None:
    """Compile every checkpointed layer of `model`; None when no layer is checkpointed."""
    compiler = LayerCompiler(backend, options)
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
