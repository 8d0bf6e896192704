"""A run's plan on resume: the first attempt's choices come back from RUN_DIR/plan.json (contract/plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.plan import RunPlan, read_plan, write_plan
from contract.protocol import ExitCode
from tests.worker.training_runs import demo_dict, new_run_dir, run_child


@pytest.mark.slow  # trains or compiles a real model
def test_a_relaunched_run_reuses_its_plan_instead_of_the_three_choice_files() -> None:
    rd = new_run_dir("plan-resume", demo_dict(max_steps=2, eval_steps=0, save_steps=2))
    first = run_child(rd)
    assert first.returncode == ExitCode.SUCCEEDED, first.stderr[-3000:]
    for old in ("optimizer-choice.json", "micro_batch.json", "preflight.json"):
        assert not (rd.root / old).exists(), old  # the plan replaced them
    plan = read_plan(rd.plan)
    assert plan is not None and plan.preflight is not None and plan.preflight["ok"]
    assert plan.levers["optimizer"].value == "adamw_8bit" and plan.levers["optimizer"].source == "default"
    # a different optimizer in the plan proves the relaunch reads it rather than resolving "auto" again
    plan.set("optimizer", "adamw_torch", "default", "chosen by the first attempt")
    write_plan(rd.plan, plan)

    again = run_child(rd)
    assert again.returncode == ExitCode.SUCCEEDED, again.stderr[-3000:]
    messages = [e["payload"]["message"] for e in again.of_kind("log")]
    assert "Reusing this run's earlier preflight result." in messages
    assert sum("Training on cpu with adamw_torch" in m for m in messages) == 1, messages
    kept = read_plan(rd.plan)
    assert kept is not None and kept.levers["optimizer"].source == "resumed"
    assert kept.value("optimizer") == "adamw_torch" and kept.preflight == plan.preflight


def test_a_run_started_before_the_plan_still_reuses_its_preflight_file(tmp_path: Path) -> None:
    from contract.config import demo_config
    from contract.rundir import RunDir
    from worker.train.training import reuse_or_run_preflight as _preflight

    (tmp_path / "preflight.json").write_text(
        '{"ok": true, "summary": "twin trained", "kept_in_full_precision": [], "notes": [], '
        '"extra_keep": [], "seconds": 1.0}',
        encoding="utf-8",
    )
    emitted: list[dict[str, object]] = []

    class Recorder:
        def emit(self, kind: object, step: int, payload: dict[str, object]) -> None:
            emitted.append(payload)

    result = _preflight(demo_config(), RunDir(tmp_path), Recorder(), None, None)  # type: ignore[arg-type]
    assert result.ok and result.summary == "twin trained"
    assert emitted == [{"level": "info", "message": "Reusing this run's earlier preflight result."}]
    # with a plan, the plan's record wins (and one without a preflight record runs it again)
    plan = RunPlan(device="cpu", preflight={**result.__dict__, "summary": "from the plan"})
    assert _preflight(demo_config(), RunDir(tmp_path), Recorder(), None, plan).summary == "from the plan"
