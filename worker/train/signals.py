"""Graceful stop requests: SIGTERM/SIGINT, the app's cancel control, and RUN_DIR/control.json. Torch-free.

A stop request never interrupts a step: it sets a flag that the trainer callback reads at the next step
boundary, where it saves a complete checkpoint and ends training. A second signal means "now": the
process exits at once with the CANCELLED code (the last complete checkpoint is still there).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from worker.protocol import ExitCode


class StopRequest:
    """One flag for every way a run can be asked to stop gracefully."""

    def __init__(self, control_file: Path | None = None, cancel_flag: threading.Event | None = None) -> None:
        self._event = threading.Event()
        self._control_file = control_file
        self._cancel_flag = cancel_flag  # e.g. Reporter.cancel_requested
        self.reason = ""
        self._signals = 0

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
        if self._signals > 1:
            # Asked twice: the caller will not wait for a checkpoint; leave now.
            os._exit(int(ExitCode.CANCELLED))
        self.request(f"stopped by {signal.Signals(signum).name}")
