"""4-bit weights unpacked by plain PyTorch ops inside compiled layers, so the compiler can fuse the unpacking.

Why: in a compiled Gemma 3n E2B step of 16 × 512 tokens on an H200, bitsandbytes' `gemm_4bit` op ran 627
times (7 projections × 30 layers × forward, recomputation and backward) and cost ~41 ms of host time plus
~2,200 dequantisation launches, in a step whose time is set by the host (bench/README.md). Written as
ordinary tensor ops (unpack two 4-bit codes per byte, look them up in the 16-value table, scale each block
by its absmax, itself unpacked from 8 bits when the statistics are double-quantized), the compiled layer
turns each weight's unpacking into one generated kernel and calls the matrix product directly.

The arithmetic is bitsandbytes' own: values and scales in fp32, one rounding to the weights' dtype, then
`F.linear`; the outputs and input gradients equal the stock layer's
(`tests/worker/train/speed/test_dequant.py`). The weights stay bitsandbytes' packed `Params4bit`, so saving,
loading and merging are unchanged.

Measured on an H200 (Gemma 3n E2B dims, 16 × 512 tokens a step, compiled, same device call; bench/README.md):
11531 → 16036 tokens/s (1.39×), peak allocated 5.88 → 5.97 GB, and the loss over 20 steps within 0.17% of
bitsandbytes' unpacking. So it is on wherever the layers are compiled; `speed.torch_dequant: off` turns
it off (`python -m bench.speed --recipes tb-bnbdequant,tb-compile` is the A/B). Eagerly, without the
compiler, these ops would be slower than bitsandbytes' kernels, so eager runs keep bitsandbytes' op.
"""

from __future__ import annotations

from typing import Any

from worker.train.rebind import is_rebound, rebind
from worker.train.speed.switches import lever_on

TORCH_DEQUANT_BY_DEFAULT = True  # 1.39x on the H200 where layers are compiled (see the module docstring)


def torch_dequant_wanted(compiled: bool, setting: str = "auto") -> bool:
    """Whether packed 4-bit layers unpack with PyTorch ops: `setting`, else the default (where compiled)."""
    return lever_on(setting, default=compiled and TORCH_DEQUANT_BY_DEFAULT)


def _block_scales(absmax: Any, quant_state: Any) -> Any:
    """Each block's fp32 scale: `absmax`, or unpacked from 8 bits when the statistics are double-quantized."""
    import torch

    if not quant_state.nested:
        return absmax.float()
    inner = quant_state.state2
    index = torch.arange(absmax.numel(), device=absmax.device) // inner.blocksize
    scales = inner.code[absmax.reshape(-1).long()] * inner.absmax[index]
    return scales + quant_state.offset


def dequantize_4bit(packed: Any, quant_state: Any, dtype: Any = None) -> Any:
    """The weight `packed` holds, from PyTorch ops: `quant_state.shape`, in `dtype` (default: the state's)."""
    import torch

    count = 1
    for size in quant_state.shape:
        count *= int(size)
    data = packed.reshape(-1)
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    # the first value of each pair sits in the byte's high four bits
    nibbles = torch.stack((data >> 4, data & 0xF), dim=-1).reshape(-1)[:count]
    values = quant_state.code.float()[nibbles.long()]
    scales = _block_scales(quant_state.absmax, quant_state)
    block = torch.arange(count, device=values.device) // quant_state.blocksize
    return (values * scales[block]).reshape(quant_state.shape).to(dtype or quant_state.dtype)


def _forward(self: Any, x: Any) -> Any:
    """`Linear4bit.forward` with the weight unpacked by `dequantize_4bit` (training shapes, [out, in]).

    Only while the compiler traces the layer: a call that runs eagerly (evaluation, a layer the compiler
    gave up on) keeps bitsandbytes' op, which is faster there and needs no full-size temporaries.
    """
    import torch
    import torch.nn.functional as F

    if not torch.compiler.is_compiling():
        return self._tuneboard_stock_forward(x)
    quant_state = self.weight.quant_state
    inp_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    # straight to the product's input dtype, as bitsandbytes' matmul does (not via the weights' dtype)
    weight = dequantize_4bit(self.weight, quant_state, dtype=x.dtype)
    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x, weight, bias).to(inp_dtype)


def unpack_with_torch(model: Any) -> int:
    """Rebind the forward of `model`'s packed 4-bit Linear layers; returns how many were rebound.

    Layers this cannot serve keep bitsandbytes' forward: weights stored [in, out] (the legacy orientation
    bitsandbytes still accepts) and layers whose compute dtype is not set yet.
    """
    import bitsandbytes as bnb

    rebound = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or is_rebound(module, "forward"):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is None or list(state.shape) != [module.out_features, module.in_features]:
            continue
        if module.compute_dtype is None:
            continue
        rebound += rebind(module, "forward", _forward)
    return rebound
