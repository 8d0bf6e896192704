"""The training child's entry points; each run ends in RUN_DIR/outcome.json and an ExitCode.

`run_training(run_dir)` is what `python -m worker.train RUN_DIR` runs (the app's launchers): it starts the
reporter and the stop request, trains (worker/train/training.py), turns whatever it raised into an Outcome
(worker/train/outcome.py), reports it and writes outcome.json last. `run_standalone(config_path)` is
`tuneboard train CONFIG`: no app, a progress bar on stderr, the adapter's path printed at the end.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from contract.config import ConfigError, JobConfig, config_to_dict, load_config_file
from contract.protocol import ExitCode
from contract.rundir import RunDir, last_complete_checkpoint
from worker.train.distributed import NullReporter, follower_exit_code, install_rank_signals, rank_info
from worker.train.log import Level, full_log_path, library_output_to_log, log_text, say
from worker.train.outcome import (
    Outcome,
    RunStopped,
    classify_failure,
    disk_full_outcome,
    is_disk_full,
    with_delivery_problem,
    write_outcome,
)
from worker.train.reporter import Reporter
from worker.train.signals import StopRequest
from worker.train.training import train_job


def run_training(run_dir: Path, *, resume: bool = True, progress_bar: bool = False) -> ExitCode:
    """Run the job in RUN_DIR (config.json, maybe job.json); always writes outcome.json; returns its code."""
    rd = RunDir(Path(run_dir))
    rd.root.mkdir(parents=True, exist_ok=True)
    if rd.outcome.exists():
        rd.outcome.unlink()  # a relaunch (resume): the old outcome no longer describes this attempt
    try:
        job = read_job(rd)
    except (RunStopped, json.JSONDecodeError, OSError) as exc:
        reason = exc.reason if isinstance(exc, RunStopped) else f"cannot read {rd.job.name}: {exc}"
        outcome = Outcome(ExitCode.CONFIG_ERROR, reason)
        write_outcome(rd, outcome)
        return outcome.code
    rank = rank_info()
    # under torchrun only rank 0 reports and writes; the other ranks stay silent
    reporter: Any = Reporter(rd, job) if rank.is_main else NullReporter()
    stop = StopRequest(rd.control, reporter.cancel_requested)
    try:
        stop.install()
    except ValueError:  # not the main thread (an in-process caller): signals stay theirs
        pass
    if rank.distributed:
        install_rank_signals(stop)
    # library warnings and expected failures' tracebacks go to RUN_DIR/train.log, not the terminal
    with library_output_to_log(rd.root, progress_bars=False):
        outcome = _run_guarded(rd, reporter, stop, resume=resume, progress_bar=progress_bar)
        if rank.is_main and not progress_bar and outcome.code not in (ExitCode.SUCCEEDED, ExitCode.CANCELLED):
            # the worker's stderr (the supervisor's tail): the plain reason and where the rest is
            print(f"{outcome.status}: {outcome.reason}\nfull log: {full_log_path(rd.root)}", file=sys.stderr)
        level: Level = "info" if outcome.code == ExitCode.SUCCEEDED else "error"
        final_step = getattr(reporter, "last_step", 0)  # NullReporter (other ranks) has none
        message = f"{outcome.status}: {outcome.reason}"
        say(message, level, reporter=reporter, step=final_step)
    reporter.close(timeout=10.0)
    if not rank.is_main:
        return follower_exit_code(outcome.code)
    outcome = with_delivery_problem(outcome, reporter.delivery_problem())
    try:
        write_outcome(rd, outcome)  # last: its presence means the worker finished on its own terms
    except OSError as exc:  # RUN_DIR gone for good: the exit code and this line still tell the app
        say(f"{outcome.status}: {outcome.reason} (outcome.json not written: {exc})")
    return outcome.code


def read_job(run_dir: RunDir) -> dict[str, Any] | None:
    """RUN_DIR/job.json ({"job_id", "app_url", "token"}) or None for a standalone run."""
    if not run_dir.job.is_file():
        return None
    data = json.loads(run_dir.job.read_text(encoding="utf-8"))
    missing = [k for k in ("job_id", "app_url", "token") if k not in data]
    if missing:
        raise RunStopped(
            ExitCode.CONFIG_ERROR, f"{run_dir.job.name} lacks {missing}; the launcher must write them"
        )
    return dict(data)


# failures whose plain reason says it all (a model not found offline, a bad config): their traceback goes
# to the full log only
_EXPECTED = frozenset({ExitCode.CONFIG_ERROR, ExitCode.QUANTIZATION_INCOMPATIBLE})


def _run_guarded(
    rd: RunDir, reporter: Reporter, stop: StopRequest, *, resume: bool, progress_bar: bool
) -> Outcome:
    from worker.train.data import DatasetError

    cfg: JobConfig | None = None
    try:
        cfg = load_config_file(rd.config)
        return train_job(cfg, rd, reporter, stop, resume=resume, progress_bar=progress_bar)
    except ConfigError as exc:
        return Outcome(ExitCode.CONFIG_ERROR, str(exc), {"problems": exc.problems})
    except DatasetError as exc:
        return Outcome(
            ExitCode.CONFIG_ERROR, f"dataset problem: {exc}", {"problems": {"dataset.source": str(exc)}}
        )
    except RunStopped as exc:
        return Outcome(exc.code, exc.reason)
    except Exception as exc:  # classified below; the traceback goes to the full log (RUN_DIR/train.log)
        # a full disk first gets back the space a half-written checkpoint took, or the traceback, the
        # events and outcome.json below could not be written either
        full = disk_full_outcome(rd) if is_disk_full(exc, rd) else None
        outcome = full or classify_failure(exc, cfg)
        try:
            log_text(traceback.format_exc())
            if outcome.code not in _EXPECTED:  # a bug or the machine's limits: shown in full too
                traceback.print_exc(file=sys.stderr)
        except OSError:
            pass
        return outcome


def default_run_dir(config_path: Path, cfg: JobConfig) -> Path:
    """./tuneboard-runs/<config stem>-<UTC timestamp> for standalone runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("tuneboard-runs") / f"{config_path.stem}-{stamp}"


def run_standalone(config_path: Path, run_dir: Path | None = None, resume: bool = False) -> int:
    """`tuneboard train CONFIG`: train in the foreground with a progress bar, then print the adapter path."""
    config_path = Path(config_path)
    try:
        cfg = load_config_file(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    rd = RunDir(Path(run_dir) if run_dir is not None else default_run_dir(config_path, cfg))
    if not resume and last_complete_checkpoint(rd) is not None:
        print(
            f"error: {rd.root} already holds checkpoints from an earlier run; pass --resume to continue it "
            "or choose another run directory",
            file=sys.stderr,
        )
        return int(ExitCode.CONFIG_ERROR)
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.config.write_text(json.dumps(config_to_dict(cfg), indent=2), encoding="utf-8")
    if rd.outcome.exists():
        rd.outcome.unlink()
    print(f"run directory: {rd.root}", file=sys.stderr)
    code = run_training(rd.root, resume=resume, progress_bar=True)
    outcome = json.loads(rd.outcome.read_text(encoding="utf-8"))
    if code == ExitCode.SUCCEEDED:
        print(f"adapter saved to {rd.adapter}")
    else:
        print(f"{outcome['status']}: {outcome['reason']}", file=sys.stderr)
        print(
            f"events: {rd.events}  (re-run with --resume --run-dir {shlex.quote(str(rd.root))} to continue)"
            if last_complete_checkpoint(rd)
            else f"events: {rd.events}",
            file=sys.stderr,
        )
        print(f"full log: {full_log_path(rd.root)}", file=sys.stderr)
    return int(code)
