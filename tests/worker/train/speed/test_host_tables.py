"""Keeping a frozen lookup table in host memory moves its weight, not what the model computes.

On a CPU-only machine the ids and the table share a device, so the rebound forward hands over to the stock
one; the host gather path (gather rows on the CPU, copy them to the ids' device, apply Gemma's embed_scale)
is driven here with ids that report another device (`cpu:0`, which torch does not equal to `cpu`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.loading import load_for_training
from worker.train.speed.host_tables import (
    MIN_TABLE_BYTES,
    host_table_candidates,
    keep_tables_on_host,
)

PER_LAYER = "base_model.model.model.embed_tokens_per_layer"


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _load(monkeypatch: pytest.MonkeyPatch) -> Any:
    """tiny-gemma3n, 4-bit nf4 with LoRA on CPU; the loader itself moves nothing to the host."""
    import torch

    cfg = demo_config()
    cfg.speed.host_tables = "off"
    cfg.training.torch_compile = "off"
    cfg.speed.fused_loss = "off"
    assert cfg.model.name == "preset:tiny-gemma3n" and cfg.quantization.method == "nf4"
    torch.manual_seed(0)
    model = load_for_training(cfg, device="cpu").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B: every adapter gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    model.train()
    return model


def _ids(high: int = 512) -> Any:
    import torch

    ids = torch.randint(0, high, (3, 17), generator=torch.Generator().manual_seed(3))
    ids[0, 0], ids[0, 1] = 0, high - 1  # the padding row and the last row too
    return ids


def _loss_and_grads(model: Any) -> tuple[Any, dict[str, Any]]:
    import torch

    ids = torch.randint(10, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


class _IdsOnAnotherDevice:
    """Token ids that report the device `cpu:0`: `_host_forward` then takes its gather-and-copy path."""

    def __init__(self, ids: Any) -> None:
        import torch

        self._ids = ids
        self.shape = ids.shape
        self.is_cuda = False
        self.device = torch.device("cpu", 0)

    def to(self, device: Any) -> Any:
        return self._ids.to(device)


def test_candidates_are_the_frozen_per_layer_table_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = _load(monkeypatch)
    modules = dict(model.named_modules())
    table = modules[PER_LAYER]
    inputs = model.get_input_embeddings()
    assert isinstance(inputs, torch.nn.Embedding) and not inputs.weight.requires_grad  # a candidate but for
    assert model.get_output_embeddings().weight is inputs.weight  # being the input embeddings / tied head

    assert host_table_candidates(model, min_bytes=0) == [PER_LAYER]
    assert host_table_candidates(model) == []  # the tiny table is far below the default floor
    size = table.weight.numel() * table.weight.element_size()
    assert size < MIN_TABLE_BYTES
    assert host_table_candidates(model, min_bytes=size) == [PER_LAYER]
    assert host_table_candidates(model, min_bytes=size + 1) == []

    table.weight.requires_grad_(True)  # trained tables stay where the optimizer is
    assert host_table_candidates(model, min_bytes=0) == []


def test_a_table_tied_to_the_output_head_is_not_a_candidate() -> None:
    import torch

    class TwoTables(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inputs = torch.nn.Embedding(10, 4)
            self.tied = torch.nn.Embedding(10, 4)
            self.free = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.tied.weight
            self.requires_grad_(False)

        def get_input_embeddings(self) -> Any:
            return self.inputs

        def get_output_embeddings(self) -> Any:
            return self.head

    assert host_table_candidates(TwoTables(), min_bytes=0) == ["free"]


def test_a_table_on_the_host_computes_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.nn.functional as F

    from worker.train.speed.host_tables import _host_forward

    model = _load(monkeypatch)
    table = dict(model.named_modules())[PER_LAYER]
    scale = table.embed_scale
    assert float(scale) != 1.0  # Gemma's scaled embedding: the scale must be applied, once
    ids = _ids(table.num_embeddings)
    with torch.no_grad():
        ref_out = table(ids)
    assert torch.equal(ref_out, F.embedding(ids, table.weight) * scale)
    ref_loss, ref_grads = _loss_and_grads(model)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    assert keep_tables_on_host(model, [PER_LAYER]) == [PER_LAYER]
    assert table.weight.device == torch.device("cpu")
    forward = table.__dict__["forward"]
    assert forward.__func__ is _host_forward and forward.__self__ is table

    with torch.no_grad():
        assert torch.equal(table(ids), ref_out)
        gathered = table(_IdsOnAnotherDevice(ids))  # the gather-and-copy path
    assert gathered.shape == ref_out.shape and torch.equal(gathered, ref_out)

    # The whole model with the gather path: same loss, same LoRA gradients.
    with monkeypatch.context() as mp:
        mp.setattr(table, "forward", lambda input_ids: forward(_IdsOnAnotherDevice(input_ids)))
        loss, grads = _loss_and_grads(model)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, want in ref_grads.items():
        assert torch.equal(grads[name], want), name
    loss, _ = _loss_and_grads(model)  # and with the forward as installed (same device: stock path)
    assert torch.equal(loss, ref_loss)

    state = model.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], v) for k, v in ref_state.items())

    assert keep_tables_on_host(model, [PER_LAYER]) == []  # not wrapped a second time
    assert table.__dict__["forward"] is forward


def test_with_the_weight_beside_the_ids_the_stock_forward_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = _load(monkeypatch)
    table = dict(model.named_modules())[PER_LAYER]
    ids = _ids(table.num_embeddings)
    with torch.no_grad():
        ref_out = table(ids)
    assert keep_tables_on_host(model, [PER_LAYER]) == [PER_LAYER]
    stock = table._tuneboard_stock_forward
    calls: list[Any] = []

    def spy(input_ids: Any) -> Any:
        calls.append(input_ids)
        return stock(input_ids)

    table._tuneboard_stock_forward = spy
    with torch.no_grad():
        out = table(ids)
        assert len(calls) == 1 and calls[0] is ids and torch.equal(out, ref_out)
        table(_IdsOnAnotherDevice(ids))
    assert len(calls) == 1  # ids elsewhere: the host gather, not the stock forward
