"""The fused linear cross-entropy computes the model's own loss and gradients without the full logits.

On CPU the chunked PyTorch implementation runs (liger-kernel needs a GPU); it shares every step but the
kernel with the liger path: hidden states from the decoder, shifted labels, dropped -100 positions,
Gemma's final logit softcapping and the Trainer's `num_items_in_batch` normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.loading import load_for_training
from worker.train.speed import fused_loss
from worker.train.speed.fused_loss import FusedLoss, causal_lm_loss, plan_fused_loss


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def model() -> Any:
    import torch

    model = load_for_training(demo_config(), device="cpu").model
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero B so every adapter gets a gradient through the loss
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    model.train()
    return model


def _batch() -> dict[str, Any]:
    import torch

    ids = torch.randint(3, 400, (3, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt without loss
    labels[2, 15:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model: Any, compute: Any) -> tuple[float, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads


def _softcap(model: Any) -> float:
    return float(model.get_base_model().config.get_text_config().final_logit_softcapping)


def test_the_fused_loss_equals_the_models_loss_and_gradients(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 512 * 7)  # several chunks, the last one partial
    batch = _batch()
    plan = FusedLoss("chunked", _softcap(model), "test")
    ref_loss, ref_grads = _loss_and_grads(model, lambda: model(**batch).loss)
    loss, grads = _loss_and_grads(model, lambda: causal_lm_loss(model, batch, plan))

    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, ref in ref_grads.items():
        err = ((grads[name] - ref).norm() / (ref.norm() + 1e-12)).item()
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"


def test_num_items_in_batch_normalises_like_the_model(model: Any) -> None:
    import torch

    batch = _batch()
    plan = FusedLoss("chunked", _softcap(model), "test")
    items = torch.tensor(100)
    with torch.no_grad():
        ref = model(**batch, num_items_in_batch=items).loss
        ours = causal_lm_loss(model, batch, plan, num_items_in_batch=items)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_leaving_out_the_softcap_would_change_the_loss(model: Any) -> None:
    """Guards the test above: on this model the softcap matters, so forgetting it could not pass."""
    import torch

    batch = _batch()
    with torch.no_grad():
        ref = float(model(**batch).loss)
        uncapped = float(causal_lm_loss(model, batch, FusedLoss("chunked", None, "test")))
    assert abs(uncapped - ref) / ref > 0.01


def test_the_fused_loss_is_off_on_cpu_unless_asked(model: Any) -> None:
    assert plan_fused_loss(model, "cpu") is None
    plan = plan_fused_loss(model, "cpu", setting="on")
    assert plan is not None and plan.impl == "chunked" and plan.softcap == _softcap(model)
    # DDP's gradient sync needs its forward
    assert plan_fused_loss(model, "cpu", distributed=True, setting="on") is None
    assert plan_fused_loss(model, "cuda", setting="off") is None
