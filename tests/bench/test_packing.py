"""bench/packing.py compares like with like: both layouts carry exactly the same examples and tokens."""

from __future__ import annotations

from bench.packing import batches, make_examples
from worker.train.data import batch_tokens


def test_both_layouts_hold_the_same_real_tokens_and_packing_removes_most_padding() -> None:
    examples = make_examples(200, mean_len=40, seq=256, vocab=500, seed=3)
    lengths = [len(e["input_ids"]) for e in examples]
    assert min(lengths) >= 8 and max(lengths) <= 256 and len(set(lengths)) > 20
    padded = batches(examples, rows=8, seq=256, packed=False)
    packed = batches(examples, rows=8, seq=256, packed=True)
    assert sum(map(batch_tokens, padded)) == sum(map(batch_tokens, packed)) == sum(lengths)
    assert sum(int((b["labels"] != -100).sum()) for b in packed) == sum(lengths) - len(examples)
    assert len(packed) < len(padded) / 2

    def padding(layout: list) -> float:
        return 1 - sum(map(batch_tokens, layout)) / sum(b["input_ids"].numel() for b in layout)

    assert padding(packed) < padding(padded) / 2
