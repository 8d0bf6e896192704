"""Helpers for tests that run the real training child (`python -m worker.train RUN_DIR`) as a subprocess.

Finished runs are cached per process by name, so several test modules can assert on one trained run.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.config import config_to_dict, demo_config
from contract.protocol import read_spool
from contract.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
_ROOT = Path(tempfile.mkdtemp(prefix="tuneboard-train-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)
PRESET_CACHE = _ROOT / "cache"  # one preset cache for every child (and test) of this session
_FINISHED: dict[str, FinishedRun] = {}


@dataclass
class FinishedRun:
    """A run directory after the child exited."""

    run_dir: RunDir
    returncode: int
    seconds: float
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every spooled event."""
        return read_spool(self.run_dir.events)

    @property
    def outcome(self) -> dict[str, Any]:
        """outcome.json."""
        return dict(json.loads(self.run_dir.outcome.read_text(encoding="utf-8")))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Events of one kind, in seq order."""
        return [e for e in self.events if e["kind"] == kind]

    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) of every METRIC event with a training loss."""
        return [
            (e["step"], float(e["payload"]["loss"])) for e in self.of_kind("metric") if "loss" in e["payload"]
        ]


def demo_dict(**training: Any) -> dict[str, Any]:
    """The demo config as a dict, with training fields overridden."""
    cfg = config_to_dict(demo_config())
    cfg["training"].update(training)
    return cfg


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a training child: offline, one thread, the shared preset cache."""
    env = dict(os.environ)
    env.update(
        {
            "TUNEBOARD_CACHE_DIR": str(PRESET_CACHE),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO),
        }
    )
    env.pop("TUNEBOARD_INJECT_NAN_AT_STEP", None)
    env.update(extra)
    return env


def new_run_dir(name: str, config: dict[str, Any]) -> RunDir:
    """A fresh run directory holding config.json."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_ROOT))
    rd = RunDir(root)
    rd.config.write_text(json.dumps(config), encoding="utf-8")
    return rd


def start_child(rd: RunDir, **env: str) -> subprocess.Popen[str]:
    """Launch the training child like the app's local launcher does."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker.train", str(rd.root)],
        cwd=REPO,
        env=child_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_child(rd: RunDir, timeout: float = 240, **env: str) -> FinishedRun:
    """Run the training child to completion."""
    started = time.monotonic()
    proc = start_child(rd, **env)
    _, err = proc.communicate(timeout=timeout)
    return FinishedRun(rd, proc.returncode, time.monotonic() - started, err)


def trained_run(name: str, config: dict[str, Any], **env: str) -> FinishedRun:
    """Train once per test session under `name` and return the cached result afterwards."""
    if name not in _FINISHED:
        _FINISHED[name] = run_child(new_run_dir(name, config), **env)
    return _FINISHED[name]


DEMO_RUN_STEPS = 40  # the dashboard's demo exactly as it ships: 40 steps, eval every 10, checkpoints every 20


def demo_run() -> FinishedRun:
    """The main end-to-end run: the dashboard's demo config unchanged (tiny Gemma 3n, nf4, capitals)."""
    return trained_run("demo", demo_dict())
