"""Which optimizer `training.optimizer` gives a run, and that the fused AdamW trains on what it is given."""

from __future__ import annotations

import pytest
import torch

from worker.config import FUSED_ADAMW_MAX_PARAMS, demo_config, resolve_optimizer
from worker.train.pipeline import build_optimizer


def test_auto_picks_fused_adamw_for_small_adapters_on_a_gpu_and_8bit_otherwise() -> None:
    assert resolve_optimizer("auto", on_gpu=True, trainable_params=20_316_160) == "adamw_torch"  # E2B r16
    assert resolve_optimizer("auto", on_gpu=True, trainable_params=FUSED_ADAMW_MAX_PARAMS + 1) == (
        "paged_adamw_8bit"
    )
    assert resolve_optimizer("auto", on_gpu=False, trainable_params=1000) == "adamw_8bit"
    # an explicit choice is kept, except paging, which needs CUDA
    assert resolve_optimizer("adamw_8bit", on_gpu=True, trainable_params=1000) == "adamw_8bit"
    assert resolve_optimizer("paged_adamw_8bit", on_gpu=False, trainable_params=1000) == "adamw_8bit"


def test_plain_adamw_steps_the_trainable_parameters_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    model[0].requires_grad_(False)
    config = demo_config().model_copy(update={"training": demo_config().training.model_copy(
        update={"optimizer": "adamw_torch"})})  # fmt: skip
    optimizer, name = build_optimizer(config, model, "cpu")
    assert name == "adamw_torch" and isinstance(optimizer, torch.optim.AdamW)
    frozen, trained = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[1].weight, trained)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel needs CUDA")
def test_on_a_gpu_plain_adamw_is_the_fused_kernel() -> None:
    model = torch.nn.Linear(8, 2).cuda()
    config = demo_config()
    optimizer, name = build_optimizer(config, model, "cuda")
    assert name == "adamw_torch" and optimizer.defaults["fused"] is True
