"""Multi-GPU jobs: data-parallel training under torchrun, one process per GPU, rank 0 speaking for all.

A job with `resources.gpus: N > 1` still starts as `python -m worker.train RUN_DIR` (whatever the launcher:
local or Ray). That process (`maybe_run_distributed`) re-runs the same entry point under
`python -m torch.distributed.run --standalone --nproc_per_node N`, waits, and exits with the code rank 0
wrote to outcome.json. Each rank loads the 4-bit base on its own GPU (device_map {"": cuda:LOCAL_RANK});
the HF Trainer wraps the LoRA model in DistributedDataParallel.

Rank rules (worker/train/run.py and training.py call these helpers):
  - only rank 0 reports (events, heartbeats), saves checkpoints' markers, the adapter and outcome.json;
    other ranks get a `NullReporter` and never write into RUN_DIR;
  - every decision that ends or changes training must be the same on all ranks or DDP deadlocks in its
    next all-reduce: `RankSyncCallback` all-reduces each step's loss, token count and stop flag before the
    run's callbacks (worker/train/callbacks) read them, so the guard, the NaN-step skip and a cancel act
    at the same step.
  - a rank ignores repeated SIGTERMs (Ray's stop signals the whole process tree and torchrun forwards its
    own, so each rank gets two); torchrun (TORCH_ELASTIC_SHUTDOWN_TIMEOUT) or the launcher SIGKILLs late ones.
On CPU the same path runs with the gloo backend (the tests: 2 processes, tiny model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from contract.protocol import ExitCode
from contract.rundir import RunDir
from worker.train.log import say

SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
DEFAULT_SHUTDOWN_TIMEOUT_S = 300  # torchrun's SIGTERM → SIGKILL wait: room to finish a checkpoint


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1


def rank_info(environ: dict[str, str] | None = None) -> RankInfo:
    """RANK / LOCAL_RANK / WORLD_SIZE as torchrun sets them."""
    env = os.environ if environ is None else environ
    try:
        return RankInfo(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
        )
    except ValueError:
        return RankInfo()


def is_rank_process(environ: dict[str, str] | None = None) -> bool:
    """True inside a process torchrun started (the wrapper itself is not one)."""
    env = os.environ if environ is None else environ
    return "LOCAL_RANK" in env and "TORCHELASTIC_RUN_ID" in env


def requested_processes(run_dir: Path) -> int:
    """resources.gpus of RUN_DIR/config.json (1 when absent or unreadable: the run reports that)."""
    try:
        config = json.loads(RunDir(Path(run_dir)).config.read_text(encoding="utf-8"))
        gpus = int((config.get("resources") or {}).get("gpus") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 1
    return max(1, gpus)


def torchrun_forced(run_dir: Path) -> bool:
    """speed.force_torchrun of RUN_DIR/config.json is "on" (False when absent or unreadable)."""
    try:
        config = json.loads(RunDir(Path(run_dir)).config.read_text(encoding="utf-8"))
        return (config.get("speed") or {}).get("force_torchrun") == "on"
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def torchrun_command(run_dir: Path, nproc: int, module: str = "worker.train") -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE RUN_DIR`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "-m",
        module,
        str(run_dir),
    ]


def maybe_run_distributed(run_dir: Path, module: str = "worker.train") -> int | None:
    """Run the job under torchrun when it asks for more than one GPU; None when it trains in this process."""
    nproc = requested_processes(run_dir)
    # speed.force_torchrun "on" runs even a one-GPU job through torchrun: a world-size-1 dry run of the
    # multi-GPU path on a machine with a single GPU (read from the config, like every lever).
    forced = torchrun_forced(run_dir)
    if (nproc <= 1 and not forced) or is_rank_process():
        return None
    run = RunDir(Path(run_dir))
    run.outcome.unlink(missing_ok=True)  # what decides our exit code must come from this attempt
    env = dict(os.environ)
    env.setdefault(SHUTDOWN_TIMEOUT_ENV, str(DEFAULT_SHUTDOWN_TIMEOUT_S))
    stopping = threading.Event()

    def note_stop(_signum: int, _frame: FrameType | None) -> None:
        # The launcher signals torchrun too (process group / Ray's process tree); forwarding would make
        # it two signals. We only stay alive to read rank 0's outcome and upload.
        stopping.set()

    previous = signal.signal(signal.SIGTERM, note_stop)
    try:
        say(f"tuneboard: starting {nproc} data-parallel processes under torchrun")
        rc = subprocess.call(torchrun_command(run.root, nproc, module), env=env)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        outcome = json.loads(run.outcome.read_text(encoding="utf-8"))
        code = outcome.get("exit_code")
        if isinstance(code, int):
            return code
    except (OSError, ValueError, AttributeError):
        pass
    return rc if rc != 0 else int(ExitCode.FAILED)  # torchrun said fine but rank 0 left no outcome


def install_rank_signals(stop: Any) -> None:
    """In a rank: every SIGTERM/SIGINT only requests the graceful stop (no 'second signal means now')."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.request(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class NullReporter:
    """The reporter of ranks other than 0: says nothing, writes nothing."""

    def __init__(self) -> None:
        self.cancel_requested = threading.Event()
        self.last_error: str | None = None

    @property
    def acked_seq(self) -> int:
        """Nothing is ever sent."""
        return 0

    @property
    def pending_count(self) -> int:
        """Nothing is ever queued."""
        return 0

    def emit(self, kind: Any, step: int, payload: dict[str, Any] | None = None) -> int:
        """Drop the event."""
        return 0

    def close(self, timeout: float = 10.0) -> bool:
        """Nothing to flush."""
        return True


class SyncedStop:
    """What the stop callback sees as its stop request: the flag as of the last all-reduce."""

    def __init__(self, local: Any) -> None:
        self.local = local
        self._set = False
        self.reason = ""

    def is_set(self) -> bool:
        """True once any rank asked to stop, from the step of the all-reduce that saw it on."""
        return self._set

    def request(self, reason: str) -> None:
        """A stop asked for in this process reaches the others at the next all-reduce."""
        self.local.request(reason)

    def mark(self, reason: str) -> None:
        """Set by RankSyncCallback when the all-reduce says some rank is stopping."""
        if not self._set:
            self._set = True
            self.reason = reason


def init_process_group(device: str) -> str:
    """Join the torchrun group (gloo on CPU, nccl on CUDA); returns this rank's device ('cuda:N' or 'cpu')."""
    import torch
    import torch.distributed as dist

    info = rank_info()
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
        device = f"cuda:{info.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device


def rank_callbacks(stopper: Any, stats: Any, stop: Any) -> list[Any]:
    """Adapt the stop and checkpoint callback to this rank; return the callbacks to run before the run's."""
    info = rank_info()
    synced = SyncedStop(stop)
    stopper.stop = synced
    if not info.is_main:
        # rank 0 alone marks checkpoints complete and prunes them (HF writes the files from rank 0 too)
        stopper.on_save = _do_nothing
    return [_rank_sync_callback_class()(stats=stats, local_stop=stop, synced=synced)]


def _do_nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _rank_sync_callback_class() -> type:
    from transformers import TrainerCallback

    class RankSyncCallback(TrainerCallback):
        """Makes every rank see the same step loss, token count and stop flag (one all-reduce per step)."""

        def __init__(self, *, stats: Any, local_stop: Any, synced: SyncedStop) -> None:
            self.stats = stats
            self.local_stop = local_stop
            self.synced = synced
            self._tokens_before = 0

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch
            import torch.distributed as dist

            loss = self.stats.step_loss()
            tokens = self.stats.tokens_seen - self._tokens_before
            stopping = self.local_stop.is_set()
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            values = torch.tensor(
                [0.0 if loss is None else loss, 0.0 if loss is None else 1.0, float(tokens), float(stopping)],
                dtype=torch.float64,
                device=device,
            )
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            loss_sum, counted, all_tokens, stops = values.tolist()
            if counted > 0:
                # the mean over ranks (NaN anywhere makes it NaN everywhere: the same verdict)
                self.stats.micro_losses = [loss_sum / counted]
            extra = int(all_tokens) - tokens  # other ranks' tokens, so throughput counts the whole job
            self.stats.tokens_seen += extra
            self.stats.window_tokens += extra
            self._tokens_before = self.stats.tokens_seen
            if stops > 0:
                reason = self.local_stop.reason if stopping else "a stop requested on another rank"
                self.synced.mark(reason or "stop requested")

    return RankSyncCallback


def follower_exit_code(code: ExitCode) -> ExitCode:
    """A rank other than 0 exits 0 for outcomes all ranks agreed on (rank 0 reports them); a nonzero exit
    would make torchrun tear rank 0 down before it wrote outcome.json. Its own failures keep their code."""
    if code in (ExitCode.SUCCEEDED, ExitCode.CANCELLED, ExitCode.DIVERGED):
        return ExitCode.SUCCEEDED
    return code
