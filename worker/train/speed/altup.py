"""Gemma 3n's AltUp prediction as a weighted sum instead of a batched 4 × 4 matrix product.

Why: AltUp mixes its four copies of the hidden state with a per-token 4 × 4 matrix. transformers writes this
as `matmul(hidden[B, S, H, 4], coefs[B, S, 4, 4])`, a batched product of B·S tiny matrices. cuBLAS runs it
with a slow generic kernel: on an H200 at 16 × 512 tokens of E2B dims the forward's product took 0.76 ms per
layer call (45 ms of a 434 ms GPU step, forward plus recomputation; bench/README.md), for work that reads
and writes the four copies once. Written as four multiply-adds, the compiled layer fuses it into one
elementwise pass.

The arithmetic is the same: each output is Σ_j coef[i, j] · hidden[j], accumulated in fp32 like the
matrix product's accumulator, rounded once to the hidden states' dtype, then the input is added as
before. The patch is applied where the decoder layers are compiled (`worker.train.speed.compile`): eagerly,
the four multiply-adds would each write a full-size temporary and be slower than the product.
`speed.altup_sum` forces it on or off (benchmarks compare the two this way).
"""

from __future__ import annotations

from typing import Any

from worker.train.rebind import rebind
from worker.train.speed.switches import lever_on


def altup_sum_wanted(compiled: bool, setting: str = "auto") -> bool:
    """Whether AltUp's prediction is rewritten: `setting` (speed.altup_sum), else where compiled."""
    return lever_on(setting, default=compiled)


def altup_predict(self: Any, hidden_states: Any) -> Any:
    """`Gemma3nTextAltUp.predict` (transformers 5.x) with the 4 × 4 mixing as multiply-adds."""
    import torch

    config = self.config
    n = config.altup_num_inputs
    modalities = self.compute_router_modalities(hidden_states[config.altup_active_idx])
    if self.training and config.altup_coef_clip is not None:
        self.prediction_coefs.weight.data.clamp_(-config.altup_coef_clip, config.altup_coef_clip)
    raw = self.prediction_coefs(modalities)
    # The stock product's dtype: autocast's where it is on, else the inputs' common dtype.
    device = hidden_states.device.type
    if torch.is_autocast_enabled(device):
        out_dtype = torch.get_autocast_dtype(device)
    else:
        out_dtype = torch.promote_types(hidden_states.dtype, raw.dtype)
    # coefs[b, s, i, j] weighs input copy j in output copy i (the stock code transposes, then multiplies).
    # Operands are rounded to the product's dtype first, as the product's own inputs are.
    coefs = raw.to(out_dtype).reshape(*modalities.shape[:-1], n, n).float()
    mixed = None
    for j in range(n):
        # [B, S, n] → [n, B, S, 1]: copy j's weight in every output copy, broadcast over the hidden size
        weight = coefs[..., j].permute(2, 0, 1).unsqueeze(-1)
        term = weight * hidden_states[j].to(out_dtype).float().unsqueeze(0)
        mixed = term if mixed is None else mixed + term
    assert mixed is not None
    predictions = mixed.to(out_dtype)
    predictions += hidden_states  # add the original input, as the stock code does
    return predictions.contiguous().type_as(hidden_states)


def patch_altup_predict(model: Any) -> int:
    """Rebind `predict` of every Gemma 3n AltUp module of `model`; returns how many were patched."""
    patched = 0
    for module in model.modules():
        if type(module).__name__ != "Gemma3nTextAltUp" or not hasattr(module, "prediction_coefs"):
            continue
        patched += rebind(module, "predict", altup_predict)
    return patched
