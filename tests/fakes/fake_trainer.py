"""A stand-in for `python -m worker.train RUN_DIR`, for scheduler tests (a seam we own).

It behaves like the real child at the process level: reads RUN_DIR/config.json and job.json, reports
events through worker.train.reporter (spool + HTTP, when an app is listening), writes outcome.json last,
exits with a protocol.ExitCode, and on SIGTERM saves nothing but exits CANCELLED. What it does is chosen
by its config's `name`, as space-separated key=value words (underscores in values read as spaces):

    sleep=2      seconds of "training" (default 0.3), emitting a loss metric every 0.1 s
    every=0.5    seconds between loss metrics instead of 0.1
    exit=5       exit code when done (default 0)
    reason=x_y   outcome.json reason
    outcome=0    do not write outcome.json
    ignore_term=1  ignore SIGTERM (the supervisor must SIGKILL it after the grace period)
    say=x_y      print this line to stderr just before exiting
    probe_cuda=1 record in fake-env.json how many CUDA devices torch sees (needs torch; GPU tests only)
    adapter=1    write a small adapter/ directory (and a complete checkpoint) before a successful exit
    term_delay=4 on SIGTERM, take this many seconds to "save a checkpoint" before exiting CANCELLED

Like the real entry point, it recreates RUN_DIR from TUNEBOARD_CONFIG_JSON / TUNEBOARD_JOB_JSON when a
remote launcher sent them, and uploads its outputs to the app when told to (worker/train/remote.py).

It always writes RUN_DIR/fake-env.json: its pid, argv, CUDA_VISIBLE_DEVICES and the job id it was given,
and appends one line per launch to RUN_DIR/launches.jsonl ({"pid", "start"}, then {"pid", "end"} when it
returns), so tests can count launches and check how many ran at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from contract.protocol import EventKind, ExitCode
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, RunDir
from worker.train.remote import materialize_run_dir, report, upload_outputs, upload_requested
from worker.train.reporter import Reporter


def parse_behaviour(name: str) -> dict[str, str]:
    """{'sleep': '2', 'exit': '5'} from 'sleep=2 exit=5' (words without '=' are ignored)."""
    found: dict[str, str] = {}
    for word in name.split():
        key, sep, value = word.partition("=")
        if sep:
            found[key] = value.replace("_", " ")
    return found


def write_outcome(run: RunDir, status: str, code: int, reason: str | None) -> None:
    """outcome.json, written last, as the real worker does."""
    run.outcome.write_text(
        json.dumps({"status": status, "reason": reason, "exit_code": code}), encoding="utf-8"
    )


def _record_launch(run: RunDir, what: str) -> None:
    """One line in RUN_DIR/launches.jsonl: this pid started or ended now (wall clock)."""
    with (run.root / "launches.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"pid": os.getpid(), what: time.time()}) + "\n")


def _probe_cuda(run: RunDir) -> None:
    """Record what CUDA the process can see, which CUDA_VISIBLE_DEVICES decides."""
    import torch  # only with probe_cuda=1: the other tests stay torch-free and fast

    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    (run.root / "fake-cuda.json").write_text(json.dumps({"device_count": count, "names": names}))


def main(argv: list[str]) -> int:
    """Run the fake for RUN_DIR = argv[0]; return the exit code."""
    run = RunDir(Path(argv[0]))
    materialize_run_dir(run.root)
    code = _run(run)
    if upload_requested(run.root):
        upload_outputs(run.root, log=report)
    return code


def _write_adapter(run: RunDir, step: int) -> None:
    """A stand-in adapter and one complete checkpoint, to exercise downloads and uploads."""
    run.adapter.mkdir(parents=True, exist_ok=True)
    (run.adapter / "adapter_config.json").write_text(json.dumps({"fake": True, "step": step}))
    (run.adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    ckpt = run.checkpoints / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / CHECKPOINT_COMPLETE_MARKER).write_text(json.dumps({"step": step}))


def _run(run: RunDir) -> int:
    _record_launch(run, "start")
    config: dict[str, Any] = json.loads(run.config.read_text(encoding="utf-8"))
    job = json.loads(run.job.read_text(encoding="utf-8")) if run.job.exists() else None
    how = parse_behaviour(str(config.get("name", "")))
    stop = {"requested": False}

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop["requested"] = True

    # installed before fake-env.json appears, so a test that waits for that file can signal safely
    signal.signal(signal.SIGTERM, signal.SIG_IGN if how.get("ignore_term") == "1" else on_term)
    (run.root / "fake-env.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "argv": sys.argv,
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "job_id": job["job_id"] if job else None,
                "has_token": bool(job and job.get("token")),
                "tuneboard_env": sorted(k for k in os.environ if k.startswith("TUNEBOARD_")),
            }
        ),
        encoding="utf-8",
    )
    if how.get("probe_cuda") == "1":
        _probe_cuda(run)
    reporter = Reporter(run, job, send_interval=0.1, heartbeat_interval=0.2, backoff_cap=0.2)
    reporter.emit(EventKind.STATUS, 0, {"status": "running", "message": "fake trainer started"})
    print(
        f"fake trainer: started on CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}",
        flush=True,
    )
    deadline = time.monotonic() + float(how.get("sleep", "0.3"))
    step = 0
    while time.monotonic() < deadline:
        if stop["requested"]:
            print("fake trainer: SIGTERM received, stopping", file=sys.stderr, flush=True)
            time.sleep(float(how.get("term_delay", "0")))  # a slow checkpoint save
            write_outcome(run, "cancelled", ExitCode.CANCELLED, "stopped on request")
            reporter.close(timeout=0.5)
            return int(ExitCode.CANCELLED)
        step += 1
        reporter.emit(EventKind.METRIC, step, {"loss": 2.0 / step})
        print(f"fake trainer: step {step}", file=sys.stderr, flush=True)
        time.sleep(float(how.get("every", "0.1")))
    code = int(how.get("exit", "0"))
    if how.get("adapter") == "1" and code == 0:
        _write_adapter(run, step)
    if "say" in how:
        print(how["say"], file=sys.stderr, flush=True)
    if how.get("outcome") != "0":
        status = "succeeded" if code == 0 else "failed"
        write_outcome(run, status, code, how.get("reason"))
    reporter.close(timeout=0.5)
    return code


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    _record_launch(RunDir(Path(sys.argv[1])), "end")
    sys.exit(exit_code)
