"""StepStats keeps micro-batch losses as tensors until the step's loss is needed, then reads them once."""

from __future__ import annotations

import math

import torch

from worker.train.callbacks.metrics import StepStats


def test_tensor_losses_are_summed_exactly_and_read_once_per_step() -> None:
    stats = StepStats()
    stats.add_micro(torch.tensor(0.25), 10)
    stats.add_micro(0.5, 7)  # the distributed sync writes plain floats
    stats.add_micro(torch.tensor([0.125]), 3)
    assert stats.tokens_seen == 20 and stats.window_tokens == 20
    assert stats.step_loss() == 0.875
    assert all(isinstance(x, float) for x in stats.micro_losses)  # read once, then kept as floats
    assert stats.step_is_finite()
    stats.close_step()
    assert stats.micro_losses == [] and stats.window_losses == [0.875]


def test_a_nan_micro_loss_makes_the_step_non_finite() -> None:
    stats = StepStats()
    stats.add_micro(torch.tensor(1.0), 1)
    stats.add_micro(torch.tensor(float("nan")), 1)
    assert not stats.step_is_finite() and math.isnan(stats.step_loss() or 0.0)
    assert StepStats().step_loss() is None
