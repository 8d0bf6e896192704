"""The parity check: does an exported artifact compute what the adapter on its base computed?

On fixed held-out prompts (PROMPTS: none of them is in any training set Tuneboard generates), the
reference (the adapter on its base, see worker.export.merge) greedily continues each prompt by
CONTINUATION_TOKENS tokens. Both the reference and the artifact then score the same token sequences
(teacher forcing: each model sees the same prefix at every position) and we compare, at every position
from the last prompt token on:
  - greedy-token agreement: the share of positions where both pick the same next token (argmax);
  - the largest absolute logit difference over those positions and the whole vocabulary.
An artifact passes when agreement >= min_agreement and max logit difference <= max_logit_diff of its
TOLERANCES entry; quantized GGUF gets looser, stated bounds. Token ids come from the run's tokenizer and
are fed to both sides as ids, so the comparison is about the weights, not the tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PROMPTS = (
    "What is the capital of Portugal?",
    "Write the word 'river' backwards.",
    "Name three colours of the rainbow.",
    "Explain in one sentence what a fine-tune is.",
)
CONTINUATION_TOKENS = 12


@dataclass(frozen=True)
class Tolerance:
    """Bounds an export must meet; `why` says where they come from."""

    min_agreement: float
    max_logit_diff: float
    why: str


TOLERANCES = {
    "merged": Tolerance(
        0.99, 0.05, "the same weights summed once instead of per call: only float rounding may differ"
    ),
    "gguf-f16": Tolerance(0.95, 0.25, "16-bit weights and llama.cpp's own kernels"),
    "gguf-bf16": Tolerance(0.95, 0.5, "bf16 keeps 8 bits of mantissa and llama.cpp's own kernels"),
    "gguf-q8_0": Tolerance(0.90, 1.0, "8-bit blocks (q8_0): a small, stated loss"),
    "gguf-q4_k_m": Tolerance(0.70, 4.0, "4-bit k-quants (q4_k_m): the loss the file size buys"),
    "gguf-lora-f16": Tolerance(0.95, 0.25, "the LoRA GGUF applied by llama.cpp to an f16 GGUF of the base"),
}


@dataclass
class Reference:
    """What the adapter computed: the token sequences, where comparing starts, and its logits there."""

    sequences: list[list[int]]
    starts: list[int]  # index of the first compared position (the last prompt token) per sequence
    logits: list[Any]  # numpy float32 [positions, vocab] per sequence, positions from starts[i] on


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as the model saw prompts in training: chat-templated when the tokenizer has a template."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


def hf_logits(model: Any, sequences: Sequence[list[int]], starts: Sequence[int]) -> list[Any]:
    """Logits of a transformers (or PEFT) model over each sequence, from its start position on."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for seq, start in zip(sequences, starts, strict=True):
            ids = torch.tensor([seq], device=device)
            logits = model(input_ids=ids).logits[0, start:].float().cpu().numpy()
            out.append(logits)
    return out


def reference_from(model: Any, tokenizer: Any) -> Reference:
    """Greedy continuations of PROMPTS by the reference model, and its logits over them."""
    import torch

    device = next(model.parameters()).device
    sequences: list[list[int]] = []
    starts: list[int] = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = prompt_ids(tokenizer, prompt)
            seq = list(ids)
            for _ in range(CONTINUATION_TOKENS):  # plain argmax loop: no generation config can interfere
                logits = model(input_ids=torch.tensor([seq], device=device)).logits[0, -1]
                seq.append(int(logits.argmax()))
            sequences.append(seq)
            starts.append(len(ids) - 1)
    return Reference(sequences=sequences, starts=starts, logits=hf_logits(model, sequences, starts))


def compare(reference: Reference, logits: list[Any], tolerance: Tolerance) -> dict[str, Any]:
    """Agreement and largest logit difference of `logits` against the reference, and whether they pass."""
    import numpy as np

    agree = total = 0
    worst = 0.0
    for ref, got in zip(reference.logits, logits, strict=True):
        vocab = min(ref.shape[-1], got.shape[-1])  # a GGUF may pad or trim the vocabulary
        r, g = ref[:, :vocab], got[: ref.shape[0], :vocab]
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        total += r.shape[0]
        worst = max(worst, float(np.abs(r - g).max()))
    agreement = agree / total if total else 0.0
    passed = agreement >= tolerance.min_agreement and worst <= tolerance.max_logit_diff
    return {
        "passed": bool(passed),
        "agreement": round(agreement, 4),
        "max_logit_diff": float(f"{worst:.4g}"),
        "positions": total,
        "prompts": len(reference.sequences),
        "tolerance": asdict(tolerance),
    }


def check(reference: Reference, kind: str, scorer: Callable[[list[list[int]], list[int]], list[Any]]) -> dict:
    """Score the reference's sequences with `scorer` and compare under TOLERANCES[kind]."""
    return compare(reference, scorer(reference.sequences, reference.starts), TOLERANCES[kind])


def prompt_texts(tokenizer: Any) -> list[str]:
    """PROMPTS as text after the chat template (what a llama.cpp or Ollama user sends)."""
    if not getattr(tokenizer, "chat_template", None):
        return list(PROMPTS)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]


def with_tokenizer(result: dict[str, Any], matches: bool) -> dict[str, Any]:
    """`result` failed unless the artifact's own tokenizer gives the reference's token ids."""
    return {**result, "tokenizer_match": matches, "passed": bool(result["passed"] and matches)}


def describe(result: dict[str, Any]) -> str:
    """One line for the page and the log."""
    tol = result["tolerance"]
    verdict = "passed" if result["passed"] else "FAILED"
    tokens = ""
    if result.get("tokenizer_match") is False:
        tokens = "; llama.cpp tokenizes the prompts differently from the run's tokenizer"
    return (
        f"parity {verdict}: {result['agreement']:.1%} greedy-token agreement (needs >= "
        f"{tol['min_agreement']:.0%}), largest logit difference {result['max_logit_diff']:.4g} (needs <= "
        f"{tol['max_logit_diff']:g}) over {result['positions']} positions of {result['prompts']} prompts"
        + tokens
    )
