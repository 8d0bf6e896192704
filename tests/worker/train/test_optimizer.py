"""Which optimizer `training.optimizer` gives a run, and that the fused AdamW trains on what it is given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.config import FUSED_ADAMW_MAX_PARAMS, demo_config, resolve_optimizer
from worker.train.trainer import build_optimizer


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


def test_a_run_keeps_its_optimizer_when_resumed(tmp_path: Path) -> None:
    from contract.plan import RunPlan
    from worker.train.speed.plan import record_optimizer
    from worker.train.trainer import LEGACY_GPU_OPTIMIZER, LEGACY_OPTIMIZER_FILE, optimizer_for_run

    def chosen(root: Path, device: str, resuming: bool, earlier: RunPlan | None = None) -> str:
        return optimizer_for_run(config, root, small, device, resuming=resuming, earlier_plan=earlier)[0]

    small = torch.nn.Linear(8, 2)  # a few trainable parameters: fused AdamW on a GPU
    config = demo_config()
    first = tmp_path / "first"
    first.mkdir()
    name, source, reason = optimizer_for_run(config, first, small, "cuda", resuming=False)
    assert (name, source) == ("adamw_torch", "default") and "18 trainable parameters" in reason
    # a later attempt reads the choice its first attempt's plan holds, whatever "auto" would say now
    earlier = RunPlan(device="cuda")
    record_optimizer(earlier, "paged_adamw_8bit", "default", "default on GPU")
    assert chosen(first, "cuda", True, earlier) == "paged_adamw_8bit"
    # a run started before the plan kept its choice in optimizer-choice.json
    (first / LEGACY_OPTIMIZER_FILE).write_text('{"optimizer": "paged_adamw_8bit"}', encoding="utf-8")
    assert chosen(first, "cuda", True) == "paged_adamw_8bit"
    # resumed from a checkpoint written before the choice was saved: the old "auto" rule
    older = tmp_path / "older"
    older.mkdir()
    assert chosen(older, "cuda", True) == LEGACY_GPU_OPTIMIZER
    assert chosen(tmp_path, "cpu", False) == "adamw_8bit"
