"""A job asking for 2 GPUs trains data-parallel under torchrun: on CPU with gloo, 2 processes, tiny model.

The same entry point the launchers start (`python -m worker.train RUN_DIR`) re-runs itself under
`torch.distributed.run`; only rank 0 may write events, checkpoint markers, the adapter and outcome.json.
A successful 2-rank run (events from rank 0 only, both ranks in each checkpoint, the adapter) is the real
worker test in tests/app/scheduler/test_ray_launcher.py, where Ray hands the job 2 (fake) GPUs.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from contract.protocol import ExitCode, read_spool
from contract.rundir import RunDir, complete_checkpoints
from tests.waiting import wait_until
from tests.worker.training_runs import demo_dict, new_run_dir, start_child
from worker.train.distributed import (
    NullReporter,
    follower_exit_code,
    is_rank_process,
    rank_info,
    requested_processes,
    torchrun_command,
)

pytestmark = pytest.mark.training


def two_process_config(**training: object) -> dict[str, object]:
    """The demo config (tiny Gemma 3n, nf4) on 2 "GPUs": 2 processes, gloo on this CPU machine."""
    config = demo_dict(**training)
    config["resources"]["gpus"] = 2  # type: ignore[index]
    return config


def test_a_cancel_seen_by_one_rank_stops_both_at_the_same_step_with_a_checkpoint() -> None:
    rd = new_run_dir("ddp-cancel", two_process_config(max_steps=200, eval_steps=0, save_steps=100))
    proc = start_child(rd)
    try:
        wait_until(lambda: any(e["kind"] == "metric" for e in read_spool(rd.events)), 200, "the first step")
        # only rank 0 is told (as with a cancel from the dashboard, which only rank 0 hears): rank 1 must
        # learn it through the per-step all-reduce, or DDP would hang in its next collective
        rank0 = next(
            p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "0"
        )
        rank0.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    outcome = json.loads(rd.outcome.read_text())
    assert proc.returncode == ExitCode.CANCELLED, err[-3000:]
    assert outcome["status"] == "cancelled"
    (ckpt,) = complete_checkpoints(rd)  # saved on stop, by both ranks together (no deadlock)
    assert (ckpt / "rng_state_1.pth").is_file()
    assert int(ckpt.name.split("-")[1]) < 200
    seqs = [e["seq"] for e in read_spool(rd.events)]
    assert seqs == list(range(1, len(seqs) + 1))  # one writer: a second rank would also have started at 1
    assert "starting 2 data-parallel processes under torchrun" in err


def test_the_wrapper_reads_the_gpu_count_and_builds_the_torchrun_command(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert requested_processes(tmp_path) == 1  # no config yet: train in-process, the pipeline reports it
    rd.config.write_text(json.dumps({"resources": {"gpus": 4}}))
    assert requested_processes(tmp_path) == 4
    argv = torchrun_command(tmp_path, 4)
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc_per_node") + 1] == "4"
    assert argv[-3:] == ["-m", "worker.train", str(tmp_path)]


def test_rank_helpers_follow_torchrun_environment() -> None:
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    info = rank_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.is_main, info.distributed) == (
        1,
        1,
        2,
        False,
        True,
    )
    assert is_rank_process(env) and not is_rank_process({})
    assert rank_info({}).is_main and not rank_info({}).distributed
    assert NullReporter().emit("metric", 1, {"loss": 1.0}) == 0
    # agreed outcomes are rank 0's to report; a rank's own crash keeps its code so torchrun tears down
    assert follower_exit_code(ExitCode.CANCELLED) == ExitCode.SUCCEEDED
    assert follower_exit_code(ExitCode.OUT_OF_MEMORY) == ExitCode.OUT_OF_MEMORY
