"""The DPO / ORPO / KTO losses against their formulas, and the guard's preference checks."""

from __future__ import annotations

import math

import torch

from worker.train.guard import DivergenceGuard
from worker.train.preference.guard import STUCK_STEPS, PreferenceMonitor
from worker.train.preference.losses import answer_logps, dpo_loss, kto_loss, orpo_loss
from worker.train.preference.trainer import FINITE_KEY


def test_answer_logps_sum_only_the_labelled_tokens() -> None:
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, 3, 5, -100]])
    total, count = answer_logps(logits, labels)
    logp = logits.log_softmax(-1)
    assert count.tolist() == [2]
    assert torch.allclose(total, logp[0, 0, 3] + logp[0, 1, 5])


def test_dpo_starts_at_log_two_and_rewards_the_wider_margin() -> None:
    zero = torch.zeros(2)
    loss, metrics = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6)
    assert float(metrics["rewards/accuracies"]) == 0.0  # equal rewards are not a preference
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-5.0, -1.0])
    loss, metrics = dpo_loss(chosen, rejected, zero - 3, zero - 3, beta=0.5)
    expected = -torch.nn.functional.logsigmoid(0.5 * (chosen - rejected)).mean()
    assert torch.allclose(loss, expected)
    assert float(metrics["rewards/accuracies"]) == 0.5
    assert torch.allclose(metrics["rewards/margins"], (0.5 * (chosen - rejected)).mean())
    hinge, _ = dpo_loss(chosen, rejected, zero, zero, beta=10.0, loss_type="hinge")
    assert torch.allclose(hinge, torch.relu(1 - 10.0 * (chosen - rejected)).mean())


def test_orpo_is_the_answer_loss_minus_the_weighted_odds_term() -> None:
    sums, tokens = torch.tensor([-2.0, -6.0]), torch.tensor([2, 3])
    loss, metrics = orpo_loss(sums[:1], sums[1:], tokens[:1], tokens[1:], beta=0.1)
    pc, pr = -1.0, -2.0  # mean log-probs
    log_odds = (pc - pr) - (math.log1p(-math.exp(pc)) - math.log1p(-math.exp(pr)))
    expected = 1.0 - 0.1 * math.log(1 / (1 + math.exp(-log_odds)))
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert float(metrics["rewards/accuracies"]) == 1.0


def test_kto_pulls_good_answers_above_and_bad_ones_below_the_kl_baseline() -> None:
    logps, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    good = torch.tensor([True, False])
    kl = torch.tensor([-2.0, -2.0])  # policy = reference on the mismatched pairs: z0 = 0
    loss, metrics = kto_loss(logps, ref, good, kl, kl, beta=1.0)
    expected = ((1 - torch.sigmoid(torch.tensor(1.0))) + (1 - torch.sigmoid(torch.tensor(1.0)))) / 2
    assert torch.allclose(loss, expected)
    assert float(metrics["rewards/chosen"]) == 1.0 and float(metrics["rewards/rejected"]) == -1.0
    assert float(metrics["kl"]) == 0.0


def _step(
    monitor: PreferenceMonitor, step: int, *, finite: float = 1.0, margin: float = 0.5, accuracy: float = 0.5
):  # type: ignore[no-untyped-def]
    monitor.record(
        {
            FINITE_KEY: torch.tensor(finite),
            "rewards/margins": torch.tensor(margin),
            "rewards/accuracies": torch.tensor(accuracy),
        }
    )
    return monitor.check(step)


def test_the_guard_names_non_finite_log_probs_and_runaway_margins() -> None:
    monitor = PreferenceMonitor(max_margin=50.0)
    assert _step(monitor, 1) is None
    verdict = _step(monitor, 2, finite=0.0)
    assert verdict is not None and verdict.kind == "non_finite_logps" and "NaN or infinite" in verdict.reason
    verdict = _step(monitor, 3, margin=80.0)
    assert verdict is not None and verdict.kind == "runaway_margin" and not verdict.warn_only


def test_accuracy_stuck_from_step_one_is_a_data_hint_once_and_only_a_warning() -> None:
    monitor = PreferenceMonitor(max_margin=50.0)
    verdicts = [_step(monitor, s, accuracy=0.0, margin=0.0) for s in range(1, STUCK_STEPS + 3)]
    fired = [v for v in verdicts if v is not None]
    assert len(fired) == 1 and fired[0].kind == "stuck_accuracy" and fired[0].warn_only
    assert "swapped or identical" in fired[0].reason
    learning = PreferenceMonitor(max_margin=50.0)
    assert all(
        _step(learning, s, accuracy=0.0 if s == 1 else 0.75) is None for s in range(1, STUCK_STEPS + 3)
    )


def test_the_divergence_guard_asks_the_preference_checks_first() -> None:
    guard = DivergenceGuard()
    monitor = PreferenceMonitor(max_margin=1.0)
    guard.checks.append(monitor.check)
    guard.zero_loss_ok = True
    monitor.record({FINITE_KEY: torch.tensor(1.0), "rewards/margins": torch.tensor(5.0)})
    verdict = guard.observe(1, 0.0, 1.0)
    assert verdict is not None and verdict.kind == "runaway_margin"
    assert guard.observe(2, 0.0, 1.0) is None  # a hinge loss of exactly 0 is fine here
