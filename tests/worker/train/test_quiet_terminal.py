"""A quiet terminal: library chatter goes to RUN_DIR/train.log, expected failures print one plain line.

Real subprocesses: `tuneboard train` (the CLI) and `python -m worker.train RUN_DIR` (the app's worker).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.protocol import ExitCode
from tests.worker.training_runs import REPO, child_env, demo_dict, new_run_dir, run_child

UNKNOWN_MODEL = "nobody-here/no-such-model-for-tuneboard-tests"


def tuneboard_train(config: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneboard.cli", "train", str(config), "--run-dir", str(run_dir)],
        cwd=REPO,
        env=child_env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow  # a real `tuneboard train` subprocess that imports torch and transformers (~8 s)
def test_tuneboard_train_of_an_unknown_hub_model_offline_prints_the_reason_and_the_log_not_a_traceback(
    tmp_path: Path,
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(f"model: {UNKNOWN_MODEL}\ntraining: {{max_steps: 2}}\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    out = tuneboard_train(config, run_dir)
    assert out.returncode == ExitCode.CONFIG_ERROR, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"failed: model {UNKNOWN_MODEL} not found locally and the hub is unreachable" in out.stderr
    log = run_dir / "train.log"
    assert f"full log: {log}" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 5, out.stderr
    full = log.read_text(encoding="utf-8")
    assert "Traceback" in full and "ModelLoadError" in full  # the detail is kept, in the log


@pytest.mark.slow  # a real worker subprocess (~8 s)
def test_the_worker_prints_an_expected_failure_plainly_and_keeps_the_traceback_in_the_log() -> None:
    cfg = demo_dict()
    cfg["model"]["name"] = UNKNOWN_MODEL
    run = run_child(new_run_dir("quiet-offline", cfg), timeout=240)
    assert run.returncode == ExitCode.CONFIG_ERROR
    assert "Traceback" not in run.stderr
    log = run.run_dir.root / "train.log"
    assert f"full log: {log}" in run.stderr and "not found locally" in run.stderr
    assert "Traceback" in log.read_text(encoding="utf-8")


@pytest.mark.training
def test_a_tiny_run_keeps_library_warnings_off_the_terminal_and_in_the_log(tmp_path: Path) -> None:
    cfg = demo_dict(max_steps=2, eval_steps=0, save_steps=2, batch_size=2)
    cfg["dataset"]["num_rows"] = 16
    config = tmp_path / "job.json"
    config.write_text(json.dumps(cfg), encoding="utf-8")
    run_dir = tmp_path / "run"
    out = tuneboard_train(config, run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    full = (run_dir / "train.log").read_text(encoding="utf-8")
    # transformers 5 warns of renamed gradient-checkpointing arguments on every run
    assert "FutureWarning" in full
    for noise in (
        "FutureWarning",
        "DeprecationWarning",
        "kernels",
        "Loading weights",
        "Writing model shards",
    ):
        assert noise not in out.stderr, out.stderr[-3000:]
    # bitsandbytes warns of its missing CPU kernels on CPUs with AVX-512 BF16 when `kernels` is absent
    import importlib.util

    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16() and importlib.util.find_spec("kernels") is None:
        assert "Failed to load CPU gemm_4bit_forward" in full
    assert "training:" in out.stderr and "2/2" in out.stderr  # Tuneboard's own progress bar stays
    assert "succeeded: trained 2 steps" in full  # the said messages are copied to the log


# run in a fresh interpreter, as the training process is: in the test process pytest's own log handlers and
# what earlier tests configured would decide what reaches stderr
CONTEXT_CHECK = """
import logging, sys, warnings
from pathlib import Path
from transformers.utils import logging as tlog
from worker.train.log import library_output_to_log, say

run = Path(sys.argv[1])
root_handlers = list(logging.getLogger().handlers)
print("BEFORE", file=sys.stderr, flush=True)
with library_output_to_log(run) as log:
    # what bitsandbytes does on a CPU without its optional kernels, and a renamed-argument notice
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
    warnings.warn("`old_name` is deprecated", FutureWarning, stacklevel=1)
    tlog.get_logger("transformers.modeling_utils").warning("a transformers notice")
    say("a message for the user")
print("AFTER", file=sys.stderr, flush=True)
assert logging.getLogger().handlers == root_handlers
say("after the run")
tlog.get_logger("transformers.modeling_utils").warning("back on stderr")
"""


def test_library_warnings_inside_the_context_reach_the_log_not_stderr_and_everything_is_put_back(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CONTEXT_CHECK, str(tmp_path)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    inside = out.stderr.split("BEFORE", 1)[1].split("AFTER", 1)[0]
    assert "gemm_4bit_forward" not in inside and "deprecated" not in inside
    assert "transformers notice" not in inside
    assert "a message for the user" in inside  # said messages still reach the terminal (no reporter here)
    text = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "Failed to load CPU gemm_4bit_forward" in text and "FutureWarning: `old_name`" in text
    assert "a transformers notice" in text and "a message for the user" in text
    after = out.stderr.split("AFTER", 1)[1]
    assert "after the run" in after and "after the run" not in text  # the log is closed
    assert "back on stderr" in after  # transformers' own handler is back
