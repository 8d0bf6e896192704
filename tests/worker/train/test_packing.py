"""Padding-free packing: several examples share a row, yet each is computed exactly as if it were alone.

The packed rows carry position_ids that restart at every example and no attention mask; transformers then
builds a per-example causal mask. These tests load the real presets in 4-bit with LoRA (the training
loader) and compare a packed batch with each example run by itself: logits, loss and LoRA gradients.
The same comparison with the old "wrapped" packing (attention across examples) shows that the check can
fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.data import TOKENS_KEY, PadCollator, batch_tokens, pack_examples
from worker.train.loading import load_for_training
from worker.train.speed.fused_loss import FusedLoss, causal_lm_loss

# fp32 on CPU; the block mask and the single-example run take different sdpa/eager paths, so the sums
# are ordered differently: measured at most 1.7e-5 on the logits, against 6 to 17 when the second
# example attends to the first (the old wrapped packing; asserted > 1e-2 below).
ATOL = 1e-4
LENGTHS = (7, 11, 5)  # rows: [7 + 11] and [5 + padding]: a boundary inside a row, and a padded row
PRESETS = ["tiny-gemma3n", "tiny-llama", "tiny-gemma3n-multimodal"]


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _load(monkeypatch: pytest.MonkeyPatch, preset: str, attn: str = "auto") -> Any:
    import torch

    cfg = demo_config().model_copy(deep=True)
    cfg.training.torch_compile = "off"
    cfg.speed.offload_activations = cfg.speed.host_tables = cfg.speed.fused_loss = "off"
    cfg.model.name = f"preset:{preset}"
    cfg.model.attn_implementation = attn
    cfg.lora.dropout = 0.0  # the packed and the separate passes must see the same adapter function
    torch.manual_seed(0)
    model = load_for_training(cfg, device="cpu").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B: the adapters change the output and get gradients
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def _examples() -> list[dict[str, list[int]]]:
    import torch

    gen = torch.Generator().manual_seed(1)
    out = []
    for n in LENGTHS:
        ids = torch.randint(10, 200, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": list(ids)})
    return out


def _packed_batch(examples: list[dict[str, list[int]]]) -> dict[str, Any]:
    packs = pack_examples(examples, max_seq_len=LENGTHS[0] + LENGTHS[1])
    assert len(packs) == 2
    batch = PadCollator(pad_token_id=0)(packs)
    batch.pop(TOKENS_KEY)
    return batch


def _spans() -> list[tuple[int, int, int]]:
    """(row, start, end) of each example in the packed batch."""
    a, b, c = LENGTHS
    return [(0, 0, a), (0, a, a + b), (1, 0, c)]


@pytest.mark.parametrize(
    ("preset", "attn"), [*((p, "auto") for p in PRESETS), ("tiny-llama", "eager")]
)  # auto: sdpa for these presets
def test_each_example_in_a_packed_row_gets_the_logits_it_gets_alone(
    monkeypatch: pytest.MonkeyPatch, preset: str, attn: str
) -> None:
    import torch

    model = _load(monkeypatch, preset, attn)
    model.eval()
    examples = _examples()
    batch = _packed_batch(examples)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        wrapped = model(
            input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])
        ).logits
        for example, (row, start, end) in zip(examples, _spans(), strict=True):
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            assert torch.allclose(packed[row, start:end], alone, atol=ATOL), (
                preset,
                (packed[row, start:end] - alone).abs().max().item(),
            )
    # the check can fail: attending across the boundary (the old wrapped packing) changes the second example
    row, start, end = _spans()[1]
    alone = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    assert (wrapped[row, start:end] - alone).abs().max().item() > 1e-2


@pytest.mark.parametrize("preset", ["tiny-gemma3n", "tiny-llama"])
def test_a_packed_batch_trains_like_its_examples_one_by_one(
    monkeypatch: pytest.MonkeyPatch, preset: str
) -> None:
    """Loss and every LoRA gradient, in training mode with gradient checkpointing, as the trainer runs it."""
    import torch

    model = _load(monkeypatch, preset)
    model.train()
    examples = _examples()
    batch = _packed_batch(examples)

    loss = model(**batch).loss
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    fused = causal_lm_loss(model, batch, FusedLoss("chunked", softcap, "test"))  # the GPU default's path
    assert torch.allclose(fused, loss, atol=1e-5), (fused.item(), loss.item())
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    # alone: each example's labels as packing leaves them (its first label masked), token-weighted sum
    total, sums = 0, []
    for example in examples:
        ids = torch.tensor([example["input_ids"]])
        targets = len(example["input_ids"]) - 1
        sums.append(model(input_ids=ids, labels=ids).loss * targets)
        total += targets
    separate = torch.stack(sums).sum() / total
    separate.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(packed_grads[name], param.grad, rtol=1e-3, atol=1e-6), name
    assert torch.allclose(loss, separate, atol=1e-5), (loss.item(), separate.item())


def test_the_collator_makes_padding_its_own_segment_and_counts_only_real_tokens() -> None:
    packs = pack_examples(
        [
            {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [1, 2, 3]},
            {"input_ids": [4, 5], "attention_mask": [1, 1], "labels": [4, 5]},
            {"input_ids": [6, 7, 8, 9], "attention_mask": [1] * 4, "labels": [6, 7, 8, 9]},
        ],
        max_seq_len=5,
    )
    assert [p["position_ids"] for p in packs] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    batch = PadCollator(pad_token_id=0)(packs)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5], [-100, 7, 8, 9, -100]]
    assert batch_tokens(batch) == 9
    unpacked = PadCollator(pad_token_id=0)(
        [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2]}]
    )
    assert "position_ids" not in unpacked and batch_tokens(unpacked) == 2
