"""4-bit weights unpacked with PyTorch ops (`worker.train.speed.dequant`) equal bitsandbytes' results."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from worker.train.speed.dequant import (
    dequantize_4bit,
    torch_dequant_wanted,
    unpack_with_torch,
)


def packed_linear(quant_type: str, double_quant: bool, dtype: torch.dtype, shape: tuple[int, int]) -> Any:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    out_features, in_features = shape
    layer = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=False,
        compute_dtype=dtype,
        compress_statistics=double_quant,
        quant_type=quant_type,
        device="cpu",
    )
    weight = torch.randn(out_features, in_features) * 0.05
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=double_quant, quant_type=quant_type
    )
    layer.weight = layer.weight._quantize("cpu")  # packs on the CPU (bitsandbytes' own quantizer)
    return layer


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unpacking_matches_bitsandbytes_bit_for_bit(
    quant_type: str, double_quant: bool, dtype: torch.dtype
) -> None:
    import bitsandbytes.functional as bf

    # 96 × 200: 19,200 values, not a multiple of 256 blocks of 64, so the last absmax block is partial
    layer = packed_linear(quant_type, double_quant, dtype, (96, 200))
    state = layer.weight.quant_state
    state.dtype = dtype
    assert state.nested == double_quant
    want = bf.dequantize_4bit(layer.weight.data, state)
    got = dequantize_4bit(layer.weight.data, state)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (96, 200)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_a_rebound_layer_gives_the_stock_output_and_input_gradient(
    weights_dtype: torch.dtype, autocast: bool
) -> None:
    layer = packed_linear("nf4", True, weights_dtype, (48, 64))
    layer.compute_dtype = torch.float32  # as the CPU loader sets it; under autocast the product is bf16
    stock = torch.nn.Sequential(layer)
    fast = copy.deepcopy(stock)
    assert unpack_with_torch(fast) == 1
    assert unpack_with_torch(fast) == 0  # already rebound
    # the PyTorch-op path runs where the layer is traced; aot_eager then runs those ops as traced
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, 64)
    results = []
    for model in (stock, compiled):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad))
    assert results[0][0].abs().sum() > 0
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    torch._dynamo.reset()


def test_only_traced_calls_unpack_with_torch_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.train.speed.dequant as dequant

    layer = packed_linear("nf4", True, torch.float32, (48, 64))
    expected = layer(torch.ones(3, 64))
    unpack_with_torch(torch.nn.Sequential(layer))
    calls: list[int] = []
    original = dequant.dequantize_4bit

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dequant, "dequantize_4bit", counting)
    torch.testing.assert_close(layer(torch.ones(3, 64)), expected, rtol=0, atol=0)
    assert calls == []  # eager: bitsandbytes' own op
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(torch.ones(3, 64)), expected, rtol=1e-6, atol=1e-6)
    assert calls  # traced: the PyTorch ops
    torch._dynamo.reset()


def test_the_rebound_forward_compiles_into_one_graph() -> None:
    layer = packed_linear("nf4", True, torch.float32, (48, 64))
    expected = layer(torch.ones(3, 64))
    unpack_with_torch(torch.nn.Sequential(layer))
    compiled = torch.compile(layer.forward, backend="aot_eager", fullgraph=True)  # a graph break fails
    torch.testing.assert_close(compiled(torch.ones(3, 64)), expected, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_it_is_on_where_layers_are_compiled_and_the_config_overrides() -> None:
    assert torch_dequant_wanted(compiled=True) and not torch_dequant_wanted(compiled=False)
    assert torch_dequant_wanted(compiled=False, setting="on")
    assert not torch_dequant_wanted(compiled=True, setting="off")
