"""Gradient clipping in the worker's Trainer walks the model's parameters once per run, not once per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.train.callbacks.metrics import StepStats
from worker.train.trainer import trainable_parameters
from worker.train.trainer import trainer_class as _trainer_class


class Counting(torch.nn.Module):
    """A frozen layer and a trained one; counts `parameters()` walks."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.adapter = torch.nn.Linear(6, 6)
        self.walks = 0

    def parameters(self, recurse: bool = True):  # type: ignore[no-untyped-def, override]
        self.walks += 1
        return super().parameters(recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.frozen(x))


def fill_grads(model: Counting, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.adapter.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 3


@pytest.mark.filterwarnings("ignore")
def test_clipping_matches_torch_over_all_parameters_and_walks_once(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    model = Counting()
    args = TrainingArguments(output_dir=str(tmp_path), max_grad_norm=1.0, report_to=[], use_cpu=True)
    trainer = _trainer_class()(model=model, args=args, step_stats=StepStats())
    reference = Counting()
    reference.load_state_dict(model.state_dict())
    for step in range(3):
        fill_grads(model, step)
        fill_grads(reference, step)
        walks = model.walks
        norm = trainer._clip_grad_norm(model)
        expected = torch.nn.utils.clip_grad_norm_(list(torch.nn.Module.parameters(reference)), 1.0)
        torch.testing.assert_close(norm, expected)
        for ours, theirs in zip(model.adapter.parameters(), reference.adapter.parameters(), strict=True):
            torch.testing.assert_close(ours.grad, theirs.grad)  # clipped alike
        if step > 0:  # the first step walks (Trainer's own mesh check walks once too), later ones do not
            assert model.walks == walks
    assert float(norm) > 1.0  # the gradients were large enough for the clip to act
    assert trainable_parameters(model) == list(model.adapter.parameters())
