"""ORPO and KTO train end to end on tiny Gemma 3n in 4-bit on CPU (the real training child).

DPO runs through the app in tests/app/jobs/test_preference_jobs.py (an SFT job, then DPO from its adapter).
Reward accuracy is measured on held-out pairs at each evaluation: it must end clearly above chance, and
the margin must grow between the two evaluations.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.protocol import ExitCode
from tests.worker.training_runs import FinishedRun, demo_dict, trained_run

pytestmark = pytest.mark.training


def preference_config(method: str, **preference: Any) -> dict[str, Any]:
    """The demo config turned into a short preference run on the generated upper-case pairs."""
    cfg = demo_dict(
        max_steps=16,
        learning_rate=5e-3,
        batch_size=8,
        max_seq_len=64,
        eval_steps=8,
        save_steps=8,
        max_new_tokens=8,
    )
    cfg["name"] = f"{method} on upper-case pairs"
    cfg["method"] = method
    cfg["dataset"] = {"source": "preset:uppercase-preference", "num_rows": 96, "eval_fraction": 0.25}
    cfg["preference"] = preference
    return cfg


def eval_series(run: FinishedRun, key: str) -> list[float]:
    """The values of one eval metric, in step order."""
    return [float(e["payload"][key]) for e in run.of_kind("metric") if key in e["payload"]]


def assert_learned_the_preference(run: FinishedRun) -> None:
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    accuracy = eval_series(run, "eval_rewards/accuracies")
    margins = eval_series(run, "eval_rewards/margins")
    assert len(accuracy) == 2 and accuracy[-1] >= 0.8, accuracy
    assert 0 < margins[0] < margins[-1], margins
    train_keys = {k for e in run.of_kind("metric") for k in e["payload"]}
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"} <= train_keys
    assert (run.run_dir.adapter / "adapter_model.safetensors").is_file()
    assert not [e for e in run.of_kind("guard")], run.of_kind("guard")


def test_orpo_learns_the_preference_without_a_reference_model() -> None:
    run = trained_run("orpo", preference_config("orpo", beta=0.1))
    assert_learned_the_preference(run)
    keys = {k for e in run.of_kind("metric") for k in e["payload"]}
    assert {"nll_loss", "log_odds_ratio", "rewards/accuracies"} <= keys
    assert not [e for e in run.of_kind("log") if "Reference log-prob" in e["payload"]["message"]]


def test_kto_learns_from_pairs_read_as_good_and_bad_answers() -> None:
    run = trained_run("kto", preference_config("kto", beta=0.1))
    assert_learned_the_preference(run)
    assert eval_series(run, "eval_kl"), "KTO reports its KL estimate"
    plan = run.of_kind("plan")[-1]["payload"]
    assert "per-sequence log-probabilities" in str(plan), "the plan says why the fused loss is off"
