"""AltUp prediction as multiply-adds (`worker.train.speed.altup`) gives transformers' own results."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from worker.train.speed.altup import altup_sum_wanted, patch_altup_predict


def altup_module(dtype: torch.dtype, hidden: int = 64) -> Any:
    from transformers import AutoConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextAltUp

    from worker.presets import preset_model_dir

    config = AutoConfig.from_pretrained(preset_model_dir("tiny-gemma3n")).get_text_config()
    config.hidden_size = hidden
    torch.manual_seed(0)
    module = Gemma3nTextAltUp(config).to(dtype).train()
    with torch.no_grad():
        for param in module.parameters():  # the init is zeros; random coefficients exercise the mixing
            param.normal_(0, 0.5)
    return module


def predict_and_grads(module: Any, x: torch.Tensor, upstream: torch.Tensor, autocast: bool) -> tuple:
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module.predict(x)
    (out.float() * upstream).sum().backward()
    return out, x.grad, module.prediction_coefs.weight.grad, module.modality_router.weight.grad


@pytest.mark.parametrize(
    ("dtype", "autocast"), [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)]
)
def test_the_multiply_adds_give_the_stock_prediction_and_gradients(
    dtype: torch.dtype, autocast: bool
) -> None:
    stock = altup_module(dtype)
    fast = copy.deepcopy(stock)
    assert patch_altup_predict(fast) == 1
    assert patch_altup_predict(fast) == 0  # a second call leaves the patched module alone
    x = torch.randn(stock.config.altup_num_inputs, 2, 5, 64, dtype=dtype)
    upstream = torch.randn(x.shape)
    want = predict_and_grads(stock, x, upstream, autocast)
    got = predict_and_grads(fast, x, upstream, autocast)
    assert got[0].dtype == want[0].dtype == dtype
    assert want[0].abs().max() > 1  # the mixing really moved the copies
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # same roundings: bit for bit
    for g, w in zip(got[1:], want[1:], strict=True):
        assert w is not None and w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_compiled_multiply_adds_trace_into_one_graph_and_match() -> None:
    stock = altup_module(torch.float32)
    fast = copy.deepcopy(stock)
    patch_altup_predict(fast)
    compiled = torch.compile(fast.predict, backend="aot_eager", fullgraph=True)  # a graph break fails
    x = torch.randn(stock.config.altup_num_inputs, 2, 5, 64)
    torch.testing.assert_close(compiled(x), stock.predict(x), rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_the_rewrite_follows_compilation_unless_the_config_says() -> None:
    assert altup_sum_wanted(compiled=True) and not altup_sum_wanted(compiled=False)
    assert not altup_sum_wanted(compiled=True, setting="off")
    assert altup_sum_wanted(compiled=False, setting="on")
