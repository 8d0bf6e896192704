"""With non-reentrant checkpointing the embeddings' output gets no gradient, and LoRA learns exactly the same.

A gradient on the input embeddings only makes autograd keep the activations of the frozen work before the
first decoder layer (Gemma 3n: the per-layer-input projection, AltUp's input projections) and run a backward
through it. These tests load the tiny presets through the worker's loader, 4-bit and un-quantized (where PEFT
itself would add the input-gradient hook), and compare every LoRA gradient with and without that hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from tests.worker.lora_helpers import give_every_adapter_a_gradient
from worker.train.loading import load_for_training


@pytest.fixture
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _lora_grads(model: Any, ids: Any) -> tuple[dict[str, Any], bool]:
    """Every LoRA gradient of one forward + backward, and whether the embeddings' output required a grad."""
    seen: list[bool] = []
    embeddings = model.get_base_model().get_input_embeddings()
    probe = embeddings.register_forward_hook(lambda _m, _i, out: seen.append(bool(out.requires_grad)))
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=ids.ne(-1), labels=ids).loss.backward()
    probe.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}
    return grads, any(seen)


@pytest.mark.parametrize(
    ("model_name", "method"),
    [("preset:tiny-gemma3n", "nf4"), ("preset:tiny-gemma3n", "none"), ("preset:tiny-llama", "nf4")],
)
def test_lora_gradients_are_the_same_without_a_gradient_on_the_embeddings(
    preset_cache: None, model_name: str, method: str
) -> None:
    import torch

    cfg = demo_config().model_copy(deep=True)
    cfg.model.name = model_name
    cfg.quantization.method = method  # type: ignore[assignment]
    torch.manual_seed(0)
    model = load_for_training(cfg, device="cpu").model
    give_every_adapter_a_gradient(model)
    model.train()
    ids = torch.randint(10, 200, (2, 24), generator=torch.Generator().manual_seed(1))

    lean, embeddings_grad = _lora_grads(model, ids)
    assert embeddings_grad is False  # the loader removed PEFT's hook too (method "none")

    model.get_base_model().enable_input_require_grads()  # the old way, for comparison
    full, embeddings_grad = _lora_grads(model, ids)
    assert embeddings_grad is True

    assert lean.keys() == full.keys()
    # every adapted projection of every layer, the first layer's included, gets its gradient
    assert len(lean) == sum(1 for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
    for name in lean:
        torch.testing.assert_close(lean[name], full[name], rtol=1e-5, atol=1e-7, msg=name)
