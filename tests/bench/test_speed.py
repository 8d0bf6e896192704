"""The GPU benchmark's pieces that run anywhere: the loss-curve gate, the table, and `tuneboard bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
