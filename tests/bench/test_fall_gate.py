"""The fall gate: rule data whose loss falls, a check along the whole fall, and MFU counted both ways."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fall_gate import (
    FALL_TOLERANCE,
    RULE_PERIOD,
    fall_gate,
    flops_per_token_both,
    rule_batches,
    rule_text,
)

REPO = Path(__file__).resolve().parents[2]


def _fall(n: int = 40, lag: float = 0.0) -> list[float]:
    """A loss falling from 12.9 to ~0.1 over ~20 steps; `lag` shifts it later by that many steps."""
    import math

    return [0.1 + 12.8 / (1 + math.exp((i - 10 - lag) / 2.5)) for i in range(n)]


def test_rule_rows_are_the_cycle_and_the_text_tokenizes_to_the_same_ids() -> None:
    from transformers import AutoTokenizer

    from worker.presets import preset_model_dir

    rows = rule_batches(6, 40, seed=3)
    assert rows.shape == (6, 40) and bool((rows[:, 0] == 2).all())
    body = rows[:, 1:]
    nxt = (body[:, :-1] - 70 + 1) % RULE_PERIOD + 70
    assert bool((body[:, 1:] == nxt).all())  # the next token is a fixed function of the current one
    tok = AutoTokenizer.from_pretrained(preset_model_dir("tiny-gemma3n"))
    for text in rule_text(4, 39, seed=1):
        ids = tok(text)["input_ids"]
        assert len(ids) == 40 and ids[0] == 2
        assert ids[1:] == [70 + (ord(c) - ord("a")) for c in text]


def test_the_gate_passes_agreeing_curves_and_fails_a_lag_a_flat_curve_and_nan() -> None:
    ref = _fall()
    close = [x * 1.002 for x in ref]
    ok = fall_gate(ref, close, ref[::10], close[::10])
    assert ok["passed"] and ok["max_dev_of_fall"] < FALL_TOLERANCE / 5
    # a curve one step behind differs by ~10% of the fall where the fall is steepest
    late = fall_gate(ref, _fall(lag=1.0))
    assert not late["passed"] and late["max_dev_of_fall"] > 2 * FALL_TOLERANCE
    assert 8 <= late["worst_step"] <= 14
    # a 1% per-step relative bound (the old gate) passes the early plateau and the lag's first steps alike
    flat = [12.88] * 40
    flat_result = fall_gate(flat, [12.881] * 40)
    assert not flat_result["passed"] and "uninformative" in flat_result["why"]
    assert not fall_gate(ref, [*ref[:-1], float("nan")])["passed"]


def test_the_gate_fails_when_only_the_eval_loss_disagrees() -> None:
    ref = _fall()
    ref_eval = ref[::10]
    bad_eval = [ref_eval[0], *(x + 1.5 for x in ref_eval[1:])]
    result = fall_gate(ref, ref, ref_eval, bad_eval)
    assert not result["passed"] and result["eval_max_dev_of_fall"] > FALL_TOLERANCE
    assert result["max_dev_of_fall"] == 0.0


def test_mfu_counts_both_ways() -> None:
    # E2B dims: 2.42 G linear multiply-accumulates, 20.3 M LoRA parameters, attention 0.38 G FLOPs at 512
    both = flops_per_token_both(2.42e9, 20.3e6, 0.38e9)
    assert both["six_n"] == pytest.approx(14.90e9, rel=1e-3)
    assert both["frozen_base"] == pytest.approx(4 * 2.42e9 + 6 * 20.3e6 + 0.38e9)
    assert both["frozen_base"] / both["six_n"] == pytest.approx(0.683, abs=0.002)  # 25.1% → 17.1%


@pytest.mark.training  # three recipes train on the tiny preset, each in its own process
def test_on_cpu_the_tuneboard_path_passes_and_a_wrong_lora_scale_fails(tmp_path: Path) -> None:
    from worker.presets import preset_model_dir

    model = preset_model_dir("tiny-gemma3n", tmp_path / "cache")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.speed", "--model", str(model), "--seq", "64", "--phases", "2x2:16",
         "--tb-phases", "4x1:16", "--recipes", "seed,tuneboard,tb-badscale", "--data", "rule",
         "--lr", "5e-4", "--eval-every", "4", "--eval-rows", "8", "--work", str(tmp_path), "--out", str(out),
         "--timeout", "800"],
        capture_output=True, text=True, timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {
        m.group(1): line for line in proc.stdout.splitlines() if (m := re.match(r"fall gate (\S+) ", line))
    }
    assert lines["tuneboard"].endswith("→ PASS"), lines["tuneboard"]
    assert "→ FAIL" in lines["tb-badscale"], lines["tb-badscale"]
    summary = json.loads(next(out.glob("speed-*-summary.json")).read_text())
    good, bad = summary["fall-gate-tuneboard"], summary["fall-gate-tb-badscale"]
    assert good["fell_enough"] and good["eval_points"] == 5
    # the broken scale agrees at step 1 (LoRA B starts at zero) and only parts along the fall
    assert bad["step1_rel_diff"] == good["step1_rel_diff"]
    assert bad["max_dev_of_fall"] > 2 * FALL_TOLERANCE > good["max_dev_of_fall"] * 2
