"""The product-speed bench: what the dashboard reports for a job, read back and set beside the loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.product_speed import comparison, job_config, product_numbers, write_rule_dataset

REPO = Path(__file__).resolve().parents[2]


def test_the_numbers_are_the_median_after_warmup_and_the_largest_peak() -> None:
    metrics = {
        "series": {
            "tokens_per_second": [
                [1, 10.0],
                [2, 500.0],
                [3, 900.0],
                [4, 1000.0],
                [5, 1100.0],
                [6, float("nan")],
            ],
            "vram_peak_gb": [[1, 5.0], [4, 6.0], [5, 5.5]],
            "loss": [[1, 12.8], [6, 0.1]],
            "eval_loss": [[3, 4.0], [6, 0.2]],
        }
    }
    job = {"status": "succeeded", "tokens_per_second": 1100.0, "peak_vram_gb": 6.0, "last_step": 6}
    got = product_numbers(job, metrics, warmup=3)
    assert got["tokens_per_s"] == 1050.0 and got["steps_measured"] == 2  # steps 4 and 5; NaN left out
    assert got["peak_allocated_gb"] == 6.0 and got["dashboard_tokens_per_second"] == 1100.0
    assert got["eval_loss"] == [(3, 4.0), (6, 0.2)]


def test_the_comparison_gives_ratios_against_the_seed_and_the_loop() -> None:
    def recipe(name: str, micro: int, accum: int, tps: float, gb: float) -> dict[str, object]:
        phase = {"micro": micro, "accum": accum, "tokens_per_step": 8192, "tokens_per_s": tps}
        return {"recipe": name, "phases": [{**phase, "peak_allocated_gb": gb}]}

    loop = {
        "summary": {"flops_per_token": 14.91e9, "flops_per_token_frozen_base": 10.19e9},
        "recipes": {
            "seed": recipe("seed", 4, 4, 2500, 22.5),
            "tb-compile": recipe("tb-compile", 16, 1, 17000, 6.0),
        },
    }
    product = {"shape": "16 × 1", "tokens_per_s": 16150.0, "peak_allocated_gb": 6.3}
    rows = comparison(loop, product, 8192, "tb-compile", 989e12)
    assert (
        rows[-1]
        == "| product: tuneboard serve job | 16 × 1 | 16150 | 6.46 | 0.95 | 6.30 | 0.28 | 24.3% | 16.6% |"
    )


def test_the_job_reads_rows_of_exactly_seq_tokens(tmp_path: Path) -> None:
    data = tmp_path / "rule.jsonl"
    write_rule_dataset(data, rows=3, seq=32)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    assert len(texts) == 3 and all(len(t) == 31 for t in texts)  # + the BOS = 32 tokens
    config = job_config(
        tmp_path / "model", data, steps=5, batch=4, grad_accum=1, seq=32, lr=1e-3, eval_steps=2,
        save_steps=2, compile_setting="off",
    )  # fmt: skip
    from contract.config import parse_config

    parsed = parse_config(config)  # the one schema the API validates with
    assert parsed.training.max_seq_len == 32 and parsed.dataset.eval_fraction > 0


@pytest.mark.training  # a real `tuneboard serve`, a real job on the tiny preset, on CPU
def test_a_job_through_tuneboard_serve_reports_its_speed(tmp_path: Path) -> None:
    from worker.presets import preset_model_dir

    model = preset_model_dir("tiny-gemma3n", tmp_path / "cache")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.product_speed", "--model", str(model), "--seq", "64", "--batch", "4",
         "--steps", "6", "--eval-steps", "3", "--save-steps", "3", "--compile", "off", "--loop-recipes", "",
         "--work", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    numbers = json.loads((out / "product.json").read_text())["numbers"]
    assert numbers["status"] == "succeeded" and numbers["last_step"] == 6
    assert numbers["tokens_per_s"] and numbers["dashboard_tokens_per_second"]
    assert [s for s, _ in numbers["eval_loss"]] == [3, 6]
    assert "| product: tuneboard serve job | 4 × 1 |" in proc.stdout
