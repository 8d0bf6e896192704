"""The DPO, ORPO and KTO losses over per-sequence log-probabilities, with the metrics TRL reports.

The formulas are TRL 1.16's (trl/trainer/dpo_trainer.py `_compute_loss`, trl/experimental/orpo
`odds_ratio_loss`, trl/trainer/kto_trainer.py `_compute_loss`); TRL keeps them inside its trainers'
methods, so they are restated here as plain functions over tensors, which the existing Trainer subclass
calls (worker/train/preference/trainer.py says why that subclass and not TRL's trainers).

Every function returns (loss, metrics): `metrics` maps the contract's metric keys (contract/metrics.py)
to detached tensors; the trainer averages them over a logging window.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the answer tokens' log-probs, number of answer tokens) per row.

    `labels` holds the token ids where the answer is and -100 elsewhere; position t's logits predict
    token t + 1. The log-softmax is taken row by row in fp32 (TRL's selective_log_softmax does the same)
    so that at most one row's fp32 log-probabilities exist at a time.
    """
    target = labels[:, 1:]
    mask = target != -100
    index = target.clamp(min=0)
    rows = []
    for row_logits, row_index in zip(logits[:, :-1], index, strict=True):
        row = row_logits.float()
        rows.append(row.gather(-1, row_index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1))
    per_token = torch.stack(rows) * mask
    return per_token.sum(dim=1), mask.sum(dim=1)


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    """rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (chosen strictly higher)."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/accuracies": (c > r).float().mean(),
    }


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """DPO on summed answer log-probs (policy and reference); rewards are beta × log-ratio."""
    chosen_ratio = chosen - ref_chosen
    rejected_ratio = rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * delta) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta) * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        # per-token averaged log-ratios, as TRL does (agreed with the IPO authors)
        assert chosen_tokens is not None and rejected_tokens is not None
        ipo_delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; use sigmoid, ipo or hinge")
    metrics = pair_metrics(beta * chosen_ratio, beta * rejected_ratio)
    metrics["logps/chosen"] = chosen.detach().mean()
    metrics["logps/rejected"] = rejected.detach().mean()
    return losses.mean(), metrics


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_sum: torch.Tensor,
    rejected_sum: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    """ORPO: the chosen answers' mean token NLL minus beta × log σ(log odds ratio); no reference model.

    The odds use per-token mean log-probs (TRL: average_log_prob=True); rewards are beta × those means.
    """
    chosen = chosen_sum / chosen_tokens.clamp(min=1)
    rejected = rejected_sum / rejected_tokens.clamp(min=1)
    nll = -chosen_sum.sum() / chosen_tokens.sum().clamp(min=1)
    # a mean log-prob of exactly 0 (probability 1) would make the odds infinite
    c, r = chosen.clamp(max=-1e-6), rejected.clamp(max=-1e-6)
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    metrics = pair_metrics(beta * chosen, beta * rejected)
    metrics.update(
        {
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
            "nll_loss": nll.detach(),
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds_chosen": log_odds.detach().mean(),
        }
    )
    return loss, metrics


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """KTO on summed answer log-probs: good answers pulled above, bad ones below, the KL estimate z0.

    z0 = mean(policy − reference) log-probs of mismatched prompt/answer pairs, clamped at 0 and detached.
    """
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    ratio = logps - ref_logps
    good = desirable.bool()
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))),
    )
    rewards = (beta * ratio).detach()
    metrics: Metrics = {"kl": kl}
    if good.any():
        metrics["rewards/chosen"] = rewards[good].mean()
        metrics["logps/chosen"] = logps.detach()[good].mean()
    if (~good).any():
        metrics["rewards/rejected"] = rewards[~good].mean()
        metrics["logps/rejected"] = logps.detach()[~good].mean()
    if good.any() and (~good).any():  # as TRL logs it for unpaired data: mean good minus mean bad reward
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return losses.mean(), metrics


def all_finite(*tensors: Any) -> torch.Tensor:
    """1.0 when every value of the tensors is finite, else 0.0, as a tensor (read once a step: no sync)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t is not None]
    return torch.stack(flags).all().float()
