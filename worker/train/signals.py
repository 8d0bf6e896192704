"""Graceful stop requests: SIGTERM/SIGINT, the app's cancel control, and RUN_DIR/control.json. Torch-free.

A stop request never interrupts a step: it sets a flag that the stop callback
(worker/train/callbacks/checkpoints.py) reads at the next step boundary, where it saves a complete
checkpoint and ends training. Before training has started (preflight, loading a model can take minutes)
there is nothing to save, so a signal ends the process at once. A second signal also means "now". Either
way the exit code is CANCELLED and outcome.json says so; the last complete checkpoint, if any, is still
there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from contract.protocol import ExitCode


class StopRequest:
    """One flag for every way a run can be asked to stop gracefully."""

    def __init__(self, control_file: Path | None = None, cancel_flag: threading.Event | None = None) -> None:
        self._event = threading.Event()
        self._control_file = control_file
        self._cancel_flag = cancel_flag  # e.g. Reporter.cancel_requested
        self.reason = ""
        self._signals = 0
        # Set by the stop callback while steps run: only then is a graceful stop worth waiting for.
        self.in_training = False

    def request(self, reason: str) -> None:
        """Ask for a graceful stop."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        """True once any source asked to stop (checks the app flag and the control file too)."""
        if self._event.is_set():
            return True
        if self._cancel_flag is not None and self._cancel_flag.is_set():
            self.request("cancelled from the dashboard")
            return True
        if self._control_file is not None and self._control_file.is_file():
            try:
                data = json.loads(self._control_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("cancel"):
                self.request("cancel requested through control.json")
                return True
        return False

    def install(self) -> None:
        """Route SIGTERM and SIGINT to a graceful stop (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if not self.in_training:
            self._exit_now(f"stopped by {name} before training started; nothing to save")
        if self._signals > 1:
            self._exit_now(f"stopped by a second {name} before the checkpoint was saved")
        self.request(f"stopped by {name}")

    def _exit_now(self, reason: str) -> None:
        """Write outcome.json (control.json's folder is RUN_DIR) and leave without unwinding."""
        if self._control_file is not None:
            outcome = self._control_file.parent / "outcome.json"
            body = {"status": "cancelled", "reason": reason, "exit_code": int(ExitCode.CANCELLED)}
            try:
                tmp = outcome.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(body, indent=2), encoding="utf-8")
                os.replace(tmp, outcome)
            except OSError:
                pass  # the exit code alone still says "cancelled"
        sys.stderr.flush()
        os._exit(int(ExitCode.CANCELLED))
