"""The CPU repacking trap: an eval forward must not change what a later backward computes.

bitsandbytes repacks a Linear4bit weight in place on its first no-grad eval forward when the CPU has
AVX512-BF16; later backwards through it are then wrong. load_for_training turns that off per layer.
The "without the fix" half can only reproduce on such a CPU: elsewhere bitsandbytes never repacks,
so that test is skipped with the reason stated (the with-fix half still runs everywhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.cpu import cpu_has_avx512_bf16
from worker.train.loading import load_for_training


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _gradients(model: Any, ids: Any) -> dict[str, Any]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _relative_changes_after_an_eval_forward(repacking_allowed: bool) -> list[float]:
    import bitsandbytes as bnb
    import torch

    cfg = demo_config()
    cfg.training.gradient_checkpointing = False
    model = load_for_training(cfg, device="cpu").model
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero B so every adapter's gradient flows through the 4-bit base weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    if repacking_allowed:  # undo Tuneboard's fix to show the trap
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = True
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    before = _gradients(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = _gradients(model, ids)
    assert before.keys() == after.keys() and before
    return sorted(((before[k] - after[k]).norm() / (before[k].norm() + 1e-12)).item() for k in before)


def test_gradients_are_identical_before_and_after_an_eval_forward_with_the_fix() -> None:
    changes = _relative_changes_after_an_eval_forward(repacking_allowed=False)
    assert max(changes) == 0.0


@pytest.mark.skipif(
    not cpu_has_avx512_bf16(), reason="this CPU lacks AVX512-BF16: bitsandbytes never repacks here"
)
def test_without_the_fix_an_eval_forward_silently_changes_later_gradients() -> None:
    changes = _relative_changes_after_an_eval_forward(repacking_allowed=True)
    median = changes[len(changes) // 2]
    assert median > 0.1, f"expected the trap to reproduce on this AVX512-BF16 CPU; median change {median:.3g}"
