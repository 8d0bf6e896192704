"""The GPU benchmark's pieces that run anywhere: the loss-curve gate, the table, and `tuneboard bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import speed
from bench.speed import GATE_REL_TOL, gate, make_batches, table

REPO = Path(__file__).resolve().parents[2]


def test_the_gate_passes_curves_within_tolerance_and_fails_a_wrong_loss() -> None:
    seed = [12.85, 12.91, 12.86, 12.89, 12.83]
    close = [x * (1 + GATE_REL_TOL / 3) for x in seed]
    halved = [x / 4 for x in seed]  # e.g. a loss divided by the accumulation steps twice
    assert gate(seed, close)["passed"]
    result = gate(seed, halved)
    assert not result["passed"] and result["max_rel_diff"] > 0.7
    assert not gate(seed, [*seed[:-1], float("nan")])["passed"]


def test_batches_are_the_same_for_every_recipe_and_fill_the_sequence() -> None:
    a, b = make_batches(3, 4, 40, seed=5), make_batches(3, 4, 40, seed=5)
    assert a.shape == (12, 40) and bool((a == b).all())
    assert int(a.min()) >= 10 and int(a.max()) < 2000


def test_the_table_gives_ratios_against_the_seed_at_the_same_tokens_per_step() -> None:
    def phase(tps: float, gb: float, micro: int, accum: int) -> dict[str, object]:
        return {
            "micro": micro,
            "accum": accum,
            "tokens_per_step": micro * accum * 512,
            "tokens_per_s": tps,
            "peak_allocated_gb": gb,
            "peak_reserved_gb": gb,
            "error": None,
        }

    rows = table(
        [
            {"recipe": "seed", "loss_impl": "model", "phases": [phase(1000, 20, 4, 4)]},
            {"recipe": "tuneboard", "loss_impl": "liger", "phases": [phase(3000, 10, 16, 1)]},
        ],
        fpt=15e9,
        peak=989e12,
        seq=512,
    )
    assert "| 3000 | 3.00 | 10.00 | 0.50 |" in rows[-1]
    assert rows[-1].endswith("| 4.6% |")  # 3000 tokens/s × 15 GFLOP / 989 TFLOP/s = 4.55%


def test_tuneboard_bench_runs_the_speed_benchmark() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tuneboard.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--phases" in proc.stdout and "--tb-phases" in proc.stdout


@pytest.mark.slow  # trains every recipe on the tiny preset, in subprocesses
def test_the_benchmark_runs_end_to_end_on_cpu_and_reuses_the_seed_when_asked(tmp_path: Path) -> None:
    """Every recipe trains on the tiny preset; a second invocation with --reuse reads their results."""
    from worker.presets import preset_model_dir

    model = preset_model_dir("tiny-gemma3n", tmp_path / "cache")
    out = tmp_path / "out"

    def bench(*extra: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.speed", "--model", str(model), "--seq", "64", "--phases", "2x2:3",
             "--tb-phases", "4x1:3,4x1:2+TB_BENCH_PROBE=on", "--recipes", "seed,tb-inputgrads,tuneboard",
             "--work", str(tmp_path),
             "--out", str(out), *extra],
            capture_output=True, text=True, timeout=600, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    first = bench()
    assert "seed: exit 0" in first and "results of an earlier invocation reused" not in first
    # the same rows at the same tokens per step: the seed's 2 x 2 against Tuneboard's 4 x 1
    assert "loss gate tuneboard vs seed over 3 steps" in first and "→ PASS" in first
    assert "loss gate tb-inputgrads vs tuneboard over 3 steps" in first
    # a phase's own environment is named in its row, and only there
    assert "| tuneboard (model loss) [TB_BENCH_PROBE=on] | 4 × 1 × 64 |" in first
    assert "| tuneboard (model loss) | 4 × 1 × 64 |" in first
    second = bench("--reuse", "seed,tb-inputgrads,tuneboard")  # nothing runs again: the table is rebuilt
    assert "seed: results of an earlier invocation reused" in second and "exit 0" not in second
    seed_rows = [line for line in second.splitlines() if line.startswith("| seed |")]
    assert seed_rows == [line for line in first.splitlines() if line.startswith("| seed |")]


def test_a_phase_names_its_shape_steps_and_environment() -> None:
    assert speed.parse_phase("16x1:50") == (16, 1, 50, {})
    assert speed.parse_phase("8x2:12+A=1+B=x=y") == (8, 2, 12, {"A": "1", "B": "x=y"})
    with pytest.raises(SystemExit, match="is not MxA:STEPS"):
        speed.parse_phase("16x1")
    with pytest.raises(SystemExit, match="is not MxA:STEPS"):
        speed.parse_phase("16x1:5+NOVALUE")
