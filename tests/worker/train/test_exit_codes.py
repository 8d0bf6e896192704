"""The training child classifies failures into exit codes and plain-words outcomes before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.config import demo_config
from contract.protocol import ExitCode
from tests.worker.training_runs import demo_dict, new_run_dir, run_child


def test_an_invalid_config_exits_with_config_error_naming_the_field() -> None:
    cfg = demo_dict()
    cfg["training"]["learning_rate"] = -1
    cfg["training"]["bogus"] = 1
    run = run_child(new_run_dir("bad-config", cfg), timeout=120)
    assert run.returncode == ExitCode.CONFIG_ERROR
    outcome = run.outcome
    assert outcome["status"] == "failed"
    assert set(outcome["problems"]) == {"training.learning_rate", "training.bogus"}


def test_a_dataset_with_bad_rows_exits_with_config_error_listing_line_numbers(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text("\n".join(json.dumps(r) for r in [good, {"messages": []}, good, {"text": 5}]) + "\n")
    cfg = demo_dict()
    cfg["dataset"]["source"] = str(data)
    run = run_child(new_run_dir("bad-data", cfg), timeout=120)
    assert run.returncode == ExitCode.CONFIG_ERROR
    reason = run.outcome["reason"]
    assert "data.jsonl line 2" in reason and "data.jsonl line 4" in reason and "line 1" not in reason


def test_out_of_memory_is_classified_with_advice() -> None:
    import torch

    from worker.train.outcome import classify_failure as _classify

    outcome = _classify(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), demo_config()
    )
    assert outcome.code == ExitCode.OUT_OF_MEMORY
    assert "training.batch_size" in outcome.reason and "training.max_seq_len" in outcome.reason


def test_a_quantization_incompatibility_gets_its_own_exit_code() -> None:
    from worker.train.loading import QuantizationIncompatibleError
    from worker.train.outcome import classify_failure as _classify

    outcome = _classify(QuantizationIncompatibleError("altup was quantized"), demo_config())
    assert outcome.code == ExitCode.QUANTIZATION_INCOMPATIBLE and outcome.status == "failed"


@pytest.mark.training
def test_run_standalone_trains_with_a_progress_bar_and_prints_the_adapter_path(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.worker.training_runs import REPO, child_env

    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(demo_dict(max_steps=4, eval_steps=0, save_steps=2)), encoding="utf-8")
    code = (
        "import sys; from pathlib import Path; from worker.train.run import run_standalone; "
        f"sys.exit(run_standalone(Path({str(config)!r}), Path({str(tmp_path / 'run')!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"adapter saved to {tmp_path / 'run' / 'adapter'}" in out.stdout
    assert "4/4" in out.stderr  # the tqdm bar reached the last step
    again = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240
    )
    assert again.returncode == ExitCode.CONFIG_ERROR and "--resume" in again.stderr


def test_the_8bit_optimizer_keeps_8bit_state_even_for_small_lora_tensors() -> None:
    import torch

    from worker.train.trainer import build_optimizer

    model = torch.nn.Linear(16, 8)  # 136 parameters: far below bitsandbytes' default min_8bit_size of 4096
    optimizer, name = build_optimizer(demo_config(), model, "cpu")
    assert name == "adamw_8bit"
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    state = optimizer.state[model.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
