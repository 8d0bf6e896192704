"""The divergence guard: its judgement step by step, and each policy on a real run with an injected NaN."""

from __future__ import annotations

import math

import pytest

from contract.protocol import ExitCode
from contract.rundir import complete_checkpoints
from tests.worker.training_runs import FinishedRun, demo_dict, trained_run
from worker.train.guard import DivergenceGuard


def _feed(guard: DivergenceGuard, norms: list[float], loss: float = 2.0) -> list[int]:
    fired = []
    for step, norm in enumerate(norms, start=1):
        if guard.observe(step, loss, norm) is not None:
            fired.append(step)
    return fired


def test_a_nan_loss_or_grad_norm_fires_at_once() -> None:
    guard = DivergenceGuard()
    verdict = guard.observe(5, float("nan"), 1.0)
    assert verdict is not None and verdict.kind == "non_finite" and "loss is nan" in verdict.reason
    verdict = guard.observe(6, 1.0, float("inf"))
    assert verdict is not None and verdict.kind == "non_finite" and verdict.step == 6


def test_a_loss_of_exactly_zero_counts_as_collapse_unless_the_data_is_trivial() -> None:
    guard = DivergenceGuard()
    verdict = guard.observe(3, 0.0, 1.0)
    assert verdict is not None and verdict.kind == "zero_loss"
    assert guard.observe(4, 0.0, 1.0, trivial_data=True) is None
    assert guard.observe(5, 1e-9, 1.0) is None


def test_huge_norms_at_the_start_are_not_divergence() -> None:
    # Gemma 3n: loss 6-7 and pre-clip norms in the hundreds at first, falling fast.
    guard = DivergenceGuard(grad_norm_factor=20, patience=3, window=20)
    assert _feed(guard, [900.0, 500.0, 300.0, 120.0, 60.0, 30.0, 12.0, 8.0, 5.0, 4.0]) == []


def test_a_sustained_explosion_fires_after_patience_steps() -> None:
    guard = DivergenceGuard(grad_norm_factor=10, patience=3, window=5)
    assert _feed(guard, [1.0] * 6 + [50.0, 60.0, 70.0]) == [9]


def test_a_single_spike_is_forgiven() -> None:
    guard = DivergenceGuard(grad_norm_factor=10, patience=3, window=5)
    assert _feed(guard, [1.0] * 6 + [50.0, 1.1, 60.0, 1.0, 70.0, 1.0]) == []


def test_guard_state_round_trips() -> None:
    guard = DivergenceGuard(grad_norm_factor=10, patience=2, window=5)
    _feed(guard, [1.0] * 5 + [50.0])
    again = DivergenceGuard(grad_norm_factor=10, patience=2, window=5)
    again.load_state_dict(guard.state_dict())
    assert again.observe(7, 2.0, 60.0) is not None  # the streak continues across a restart


# ------------------------------------------------------------------------------ policies on real runs

NAN_STEP = 7
STEPS = 12


def _policy_run(policy: str, nan_steps: str = str(NAN_STEP)) -> FinishedRun:
    cfg = demo_dict(max_steps=STEPS, save_steps=4, eval_steps=0, scheduler="constant", warmup=0.0)
    cfg["guard"]["policy"] = policy
    return trained_run(f"guard-{policy}", cfg, TUNEBOARD_INJECT_NAN_AT_STEP=nan_steps)


def _lr_by_step(run: FinishedRun) -> dict[int, float]:
    return {
        e["step"]: e["payload"]["learning_rate"]
        for e in run.of_kind("metric")
        if "learning_rate" in e["payload"]
    }


@pytest.mark.training
def test_stop_policy_ends_the_run_as_diverged_keeping_the_last_good_checkpoint() -> None:
    run = _policy_run("stop")
    assert run.returncode == ExitCode.DIVERGED, run.stderr[-3000:]
    assert run.outcome["status"] == "failed" and "diverged" in run.outcome["reason"]
    assert "checkpoint-4" in run.outcome["reason"]
    guard = run.of_kind("guard")
    assert [(e["step"], e["payload"]["action"]) for e in guard] == [(NAN_STEP, "stop")]
    assert [p.name for p in complete_checkpoints(run.run_dir)] == ["checkpoint-4"]
    assert max(step for step, _ in run.losses()) == NAN_STEP
    assert not run.run_dir.adapter.exists()


@pytest.mark.training
def test_rollback_policy_restores_the_checkpoint_halves_the_lr_and_finishes() -> None:
    # NaN at step 2 (no checkpoint yet: back to the initial adapter) and at step 7 (back to checkpoint-4).
    run = _policy_run("rollback", nan_steps=f"2,{NAN_STEP}")
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    guard = run.of_kind("guard")
    assert [(e["step"], e["payload"]["action"]) for e in guard] == [(2, "rollback"), (NAN_STEP, "rollback")]
    first, second = (e["payload"]["detail"] for e in guard)
    assert first["restored"].startswith("initial adapter") and first["rollbacks"] == 1
    assert second["restored"] == "checkpoints/checkpoint-4" and second["rollbacks"] == 2
    lr = _lr_by_step(run)
    assert lr[1] == pytest.approx(5e-3)
    assert lr[3] == pytest.approx(2.5e-3) and lr[NAN_STEP - 1] == pytest.approx(2.5e-3)
    assert lr[NAN_STEP + 1] == pytest.approx(1.25e-3) and lr[STEPS] == pytest.approx(1.25e-3)
    losses = dict(run.losses())
    assert math.isnan(losses[2]) and math.isnan(losses[NAN_STEP])
    assert all(math.isfinite(v) for s, v in losses.items() if s not in (2, NAN_STEP))
    assert (run.run_dir.adapter / "adapter_model.safetensors").is_file()


@pytest.mark.training
def test_warn_policy_records_an_event_and_changes_nothing_else() -> None:
    run = _policy_run("warn")
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    guard = run.of_kind("guard")
    assert [(e["step"], e["payload"]["action"]) for e in guard] == [(NAN_STEP, "warn")]
    lr = _lr_by_step(run)
    assert lr[NAN_STEP + 1] == pytest.approx(5e-3)  # no halving
    losses = dict(run.losses())
    # The NaN step's update was skipped, so the weights stay finite and training goes on.
    assert all(math.isfinite(v) for s, v in losses.items() if s != NAN_STEP)
    assert max(losses) == STEPS
    # eval_steps 0: one evaluation, at the end.
    assert [e["step"] for e in run.of_kind("metric") if "eval_loss" in e["payload"]] == [STEPS]
