"""Offloading checkpointed layer inputs to CPU changes where they wait, not the gradients.

On CPU the offload is a separate host copy made and restored through the same saved-tensor hooks as the
pinned-memory path on CUDA, so these tests check the wiring (which tensors go, that they come back intact).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from tests.worker.lora_helpers import give_every_adapter_a_gradient
from worker.train.loading import load_for_training
from worker.train.speed import offload
from worker.train.speed.offload import OffloadHooks, offload_wanted, offloading_checkpoint


def _grads_of_two_checkpointed_layers(hooks: OffloadHooks | None) -> tuple[list[Any], Any]:
    import torch
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()) for _ in range(2)]
    )
    ckpt: Any = lambda fn, *a: checkpoint(fn, *a, use_reentrant=False)  # noqa: E731
    if hooks is not None:
        ckpt = offloading_checkpoint(ckpt, hooks)
    x = torch.randn(4, 8, requires_grad=True)
    h = x
    for layer in layers:
        h = ckpt(layer, h * 1.5)
    h.pow(2).sum().backward()
    return [p.grad.clone() for p in layers.parameters()], x.grad.clone()


def test_offloaded_checkpoint_inputs_give_identical_gradients() -> None:
    import torch

    hooks = OffloadHooks(min_bytes=0)
    grads_on, x_on = _grads_of_two_checkpointed_layers(hooks)
    grads_off, x_off = _grads_of_two_checkpointed_layers(None)
    assert hooks.packed == 2  # exactly each layer's input, not the tensors the layers save themselves
    assert torch.equal(x_on, x_off)
    for on, off in zip(grads_on, grads_off, strict=True):
        assert torch.equal(on, off)


def test_inputs_below_the_size_floor_stay_where_they_are() -> None:
    hooks = OffloadHooks(min_bytes=1 << 20)
    _grads_of_two_checkpointed_layers(hooks)
    assert hooks.packed == 0


def test_the_config_setting_decides_and_auto_stays_off_on_cpu() -> None:
    assert offload_wanted("cpu", "auto") is False
    assert offload_wanted("cuda", "auto") is offload.OFFLOAD_ON_CUDA_BY_DEFAULT
    assert offload_wanted("cpu", "on") is True
    assert offload_wanted("cuda", "off") is False
    with pytest.raises(ValueError, match="on, off or auto"):
        offload_wanted("cuda", "sometimes")


@pytest.fixture
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _preset_grads(monkeypatch: pytest.MonkeyPatch, on: bool) -> tuple[dict[str, Any], int]:
    import torch

    cfg = demo_config()
    cfg.speed.offload_activations = "on" if on else "off"
    cfg.speed.fused_loss = "off"
    torch.manual_seed(0)  # the same LoRA init for both loads
    model = load_for_training(cfg, device="cpu").model
    wrapped = [
        m
        for m in model.modules()
        if getattr(getattr(m, "_gradient_checkpointing_func", None), "_tuneboard_offload", 0)
    ]
    torch.manual_seed(0)
    give_every_adapter_a_gradient(model)
    model.train()
    ids = torch.randint(10, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, len(wrapped)


def test_the_tiny_gemma3n_preset_trains_to_the_same_gradients_with_offload_forced_on(
    preset_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(offload, "MIN_OFFLOAD_BYTES", 0)  # the tiny model's inputs are below the GPU floor
    on, wrapped_on = _preset_grads(monkeypatch, on=True)
    off, wrapped_off = _preset_grads(monkeypatch, on=False)
    assert wrapped_on > 0 and wrapped_off == 0
    assert on.keys() == off.keys() and on
    for name in on:
        assert torch.equal(on[name], off[name]), name
