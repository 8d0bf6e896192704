"""CPU offload of the inputs that gradient checkpointing keeps for each decoder layer.

With checkpointing on, what stays on the GPU between forward and backward is every checkpointed layer's input:
for Gemma 3n that is AltUp's 4 stacked hidden-state copies per layer (4 · rows · seq · hidden bf16 values,
~134 MB per layer at 16 × 512 on E2B dims), a large part of the peak at large micro-batches. This module moves
those saved inputs to pinned host memory as the forward pass goes (an asynchronous copy on a side stream, so
the forward does not wait for it) and copies each back to the GPU when the backward recomputes that layer.

How: non-reentrant `torch.utils.checkpoint` saves a layer's tensor inputs through the saved-tensor hooks that
are active around the call, while the tensors the layer itself saves go through checkpoint's own inner hooks.
So wrapping each layer's checkpoint function in `OffloadHooks` offloads exactly the layer inputs and nothing
else. Gradients are unchanged: the same values come back (tested on CPU, where a plain copy stands in).

`speed.offload_activations` chooses: on (CUDA; on CPU a copy, for tests), off, or auto:
the default `OFFLOAD_ON_CUDA_BY_DEFAULT` on CUDA, off on CPU. It only acts when gradient checkpointing is on.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

from worker.train.speed.switches import lever_on

# Set from the H100 measurement in bench/README.md ("CPU offload of checkpointed activations").
OFFLOAD_ON_CUDA_BY_DEFAULT = True
# Small inputs (rotary tables, masks, per-layer-input slices at small batches) are not worth a transfer.
MIN_OFFLOAD_BYTES = 1 << 20


def offload_wanted(device: str, setting: str = "auto") -> bool:
    """Whether checkpointed layer inputs go to CPU for a run on `device` (`setting`, else the default)."""
    return lever_on(setting, default=device.startswith("cuda") and OFFLOAD_ON_CUDA_BY_DEFAULT)


@dataclass(eq=False)
class _Offloaded:
    """A saved tensor parked on the host: its copy, where it came from, and when the copy is done."""

    device: Any
    host: Any
    copied: Any  # torch.cuda.Event for a GPU tensor, None for a CPU stand-in copy
    group: int = -1  # which checkpoint call saved it (the prefetch brings the previous call's back early)
    fetched: Any = None  # its GPU copy, started ahead of need by the prefetch
    fetched_ready: Any = None


_side_streams: dict[Any, Any] = {}


def _side_stream(device: Any) -> Any:
    import torch

    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device=device)
    return _side_streams[device]


def _pack(tensor: Any, min_bytes: int) -> Any:
    import torch

    if tensor.numel() * tensor.element_size() < min_bytes:
        return tensor
    if tensor.is_cuda:
        stream = _side_stream(tensor.device)
        main = torch.cuda.current_stream(tensor.device)
        stream.wait_stream(main)  # the tensor's producer must have finished before we read it
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        with torch.cuda.stream(stream):
            host.copy_(tensor, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        # The caller may drop the tensor right away: its memory must not be reused before the copy ran.
        tensor.record_stream(stream)
        return _Offloaded(tensor.device, host, copied)
    # CPU: a separate copy, so that tests exercise the same pack/unpack path as on the GPU.
    return _Offloaded(tensor.device, tensor.detach().clone(), None)


class OffloadHooks:
    """Saved-tensor hooks that park tensors of at least `min_bytes` on the (pinned) host until backward.

    With `prefetch` (CUDA), unpacking a tensor of checkpoint call g also starts copying call g - 1's tensors
    back on the side stream: backward visits the layers in reverse, so the next layer's input arrives while
    this layer recomputes (double buffering; one extra layer input on the GPU).
    """

    def __init__(self, min_bytes: int | None = None, prefetch: bool = True) -> None:
        import torch

        self.min_bytes = MIN_OFFLOAD_BYTES if min_bytes is None else min_bytes
        self.prefetch = prefetch
        self.packed = 0  # how many tensors went to the host (tests and benchmarks read it)
        self._group = 0
        self._groups: dict[int, list[weakref.ref[_Offloaded]]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def begin_group(self) -> None:
        """Mark the start of one checkpoint call (one layer's forward)."""
        self._group += 1

    def _pack(self, tensor: Any) -> Any:
        packed = _pack(tensor, self.min_bytes)
        if isinstance(packed, _Offloaded):
            self.packed += 1
            if packed.copied is not None and self.prefetch:
                packed.group = self._group
                self._groups.setdefault(self._group, []).append(weakref.ref(packed))
                if len(self._groups) > 4096:  # forwards never followed by a backward: forget the dead entries
                    for key in [k for k, refs in self._groups.items() if all(r() is None for r in refs)]:
                        del self._groups[key]
        return packed

    def _unpack(self, packed: Any) -> Any:
        import torch

        if not isinstance(packed, _Offloaded):
            return packed
        if packed.copied is None:
            return packed.host
        main = torch.cuda.current_stream(packed.device)
        if packed.fetched is not None:
            main.wait_event(packed.fetched_ready)
            tensor = packed.fetched
            packed.fetched = None
            tensor.record_stream(main)  # allocated on the side stream, used (and freed) on this one
        else:
            main.wait_event(packed.copied)
            tensor = packed.host.to(packed.device, non_blocking=True)
        if self.prefetch:
            self._groups.pop(packed.group, None)
            self._prefetch(packed.group - 1)
        return tensor

    def _prefetch(self, group: int) -> None:
        import torch

        for ref in self._groups.pop(group, []):
            item = ref()
            if item is None or item.fetched is not None:
                continue
            stream = _side_stream(item.device)
            with torch.cuda.stream(stream):
                stream.wait_event(item.copied)
                item.fetched = item.host.to(item.device, non_blocking=True)
                item.fetched_ready = torch.cuda.Event()
                item.fetched_ready.record(stream)

    def __enter__(self) -> OffloadHooks:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def offloading_checkpoint(checkpoint_fn: Any, hooks: OffloadHooks) -> Any:
    """`checkpoint_fn` (a non-reentrant checkpoint) with its saved layer inputs offloaded through `hooks`."""

    @functools.wraps(checkpoint_fn)
    def run(function: Any, *args: Any, **kwargs: Any) -> Any:
        hooks.begin_group()
        with hooks:
            return checkpoint_fn(function, *args, **kwargs)

    return run


def enable_activation_offload(
    model: Any, min_bytes: int | None = None, prefetch: bool = True
) -> OffloadHooks | None:
    """Offload the saved inputs of every checkpointed layer of `model`; None when none is checkpointed.

    `prefetch` False copies each input back only when needed (speed.offload_prefetch; for benchmarks).
    """
    hooks = OffloadHooks(min_bytes, prefetch=prefetch)
    wrapped = 0
    for module in model.modules():
        fn = getattr(module, "_gradient_checkpointing_func", None)
        if fn is None or not getattr(module, "gradient_checkpointing", False):
            continue
        if getattr(fn, "_tuneboard_offload", False):
            continue  # already wrapped (a second call must not nest hooks)
        new = offloading_checkpoint(fn, hooks)
        new._tuneboard_offload = True  # type: ignore[attr-defined]
        module._gradient_checkpointing_func = new
        wrapped += 1
    return hooks if wrapped else None
