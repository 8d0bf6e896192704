"""The forwarder: a background thread that sends the run's METRIC events to the trackers of `report_to`.

It reads what the dashboard gets — RUN_DIR/events.jsonl, the reporter's spool — so the trackers receive the
same numbers under the same names (loss, grad_norm, learning_rate, tokens_per_second, memory, eval_loss,
and whatever else a METRIC event carries), and the training loop never calls a tracker: a step costs
nothing more than it did. The thread opens each tracker, then about once a second forwards the events
appended since, and on close forwards the rest and ends each tracker's run (failed or finished).

A tracker that fails — not installed, no network, a full disk, its own bug — is dropped for the run with
one warning (a LOG event on the job page, copied to RUN_DIR/train.log); the run and the other trackers go
on. Closing waits at most `close_timeout_s` for the trackers, then leaves them behind with a warning, so a
hung server cannot hold a finished run.

RUN_DIR/trackers/state.json keeps each tracker's run id and the last event forwarded: a relaunched attempt
(resume) continues the same tracker runs from there instead of sending everything again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from contract.protocol import EventKind, decode_number
from contract.rundir import RunDir
from worker.train.log import say
from worker.train.trackers.backends import BACKENDS, Backend, RunContext

POLL_S = 1.0
CLOSE_TIMEOUT_S = 60.0
STATE_EVERY_S = 10.0
STATE_FILE = "state.json"
INSTALL_HINT = "install the trackers on the worker: pip install 'tuneboard[trackers]'"
SETTINGS_HINT = "check its settings in the worker's environment (docs/trackers.md)"


def trackers_dir(run_dir: RunDir) -> Path:
    """RUN_DIR/trackers: the trackers' local files and the forwarder's state."""
    return run_dir.root / "trackers"


class Forwarder:
    """Sends the run's METRIC events to `names` from a daemon thread; `close` ends it within a bound."""

    def __init__(
        self,
        names: list[str],
        ctx: RunContext,
        run_dir: RunDir,
        reporter: Any,
        *,
        poll_s: float = POLL_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.names = list(names)
        self.ctx = ctx
        self.run_dir = run_dir
        self.reporter = reporter
        self.poll_s = poll_s
        self.close_timeout_s = close_timeout_s
        self.dropped: dict[str, str] = {}  # tracker → why it was dropped
        self.forwarded = 0  # METRIC events sent on (to at least one tracker)
        self._live: list[Backend] = []
        self.ready = threading.Event()  # set once every tracker was tried (opened or dropped)
        self.open_seconds: dict[str, float] = {}
        self._failed = False
        self._stop = threading.Event()
        self._offset = 0
        self._partial = b""
        self._step = 0
        self._state_saved = 0.0
        state = self._read_state()
        self._seq = int(state.get("forwarded_seq", 0))
        ids = state.get("run_ids", {})
        self._run_ids: dict[str, str] = {k: str(v) for k, v in ids.items() if isinstance(k, str) and v}
        ctx.resume_ids = dict(self._run_ids)
        self._thread = threading.Thread(target=self._run, name="tuneboard-trackers", daemon=True)

    def start(self) -> Forwarder:
        """Start the thread (it opens the trackers: a slow one delays no training step)."""
        self._thread.start()
        return self

    def close(self, *, failed: bool) -> None:
        """Forward what is left, end each tracker's run (failed or finished), within close_timeout_s."""
        self._failed = failed
        self._stop.set()
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            waiting = ", ".join(b.name for b in self._live) or ", ".join(self.names)
            say(
                f"report_to: {waiting} still busy {self.close_timeout_s:.0f} s after training ended; the run "
                "ends without waiting (their last metrics may be missing; the dashboard has them all)",
                "warning",
                reporter=self.reporter,
                step=self._step,
            )

    # ------------------------------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            try:
                for name in self.names:  # even when closing already: the events so far are worth sending
                    self._open(name)
            finally:
                self.ready.set()
            self._save_state(force=True)
            while self._live:
                stopping = self._stop.is_set()
                self._forward_new()
                self._save_state(force=stopping)
                if stopping:
                    break
                self._stop.wait(self.poll_s)
            for backend in list(self._live):
                try:
                    backend.close(self._failed)
                except Exception as exc:  # its end only: what it got is kept where the tracker keeps it
                    self._drop(backend, "could not end its run", exc, opened=False)
            self._live = []
        except (Exception, SystemExit) as exc:  # a bug here (or a tracker's sys.exit) must not end the run
            say(
                f"report_to: the tracker forwarder stopped ({type(exc).__name__}: {exc}); the run goes on",
                "warning",
                reporter=self.reporter,
                step=self._step,
            )

    def _open(self, name: str) -> None:
        backend = BACKENDS[name]()
        started = time.monotonic()
        try:
            where = backend.open(self.ctx)
        except (Exception, SystemExit) as exc:  # SystemExit: a tracker that gives up by exiting
            self._drop(backend, "could not start", exc, opened=False)
            return
        self._live.append(backend)
        run_id = _guarded_id(backend)
        if run_id:
            self._run_ids[name] = run_id
        ready = self.open_seconds[name] = time.monotonic() - started
        say(f"report_to: {name}: {where}; ready in {ready:.1f} s", reporter=self.reporter, step=self._step)

    def _drop(self, backend: Backend, what: str, exc: BaseException, *, opened: bool = True) -> None:
        if backend in self._live:
            self._live.remove(backend)
        reason = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        self.dropped[backend.name] = reason
        hint = INSTALL_HINT if isinstance(exc, ImportError) else SETTINGS_HINT
        say(
            f"report_to: {backend.name} {what} ({reason}); it gets nothing more from this run, which goes on "
            f"(the dashboard has every metric). To fix: {hint}",
            "warning",
            reporter=self.reporter,
            step=self._step,
        )
        if opened:
            try:
                backend.close(True)
            except Exception:  # already dropped and said so: its end is best effort
                pass

    def _forward_new(self) -> None:
        events = self._read_new()
        if not events:
            return
        rows: list[tuple[int, dict[str, float]]] = []
        for event in events:
            metrics = {
                k: number for k, v in event["payload"].items() if (number := decode_number(v)) is not None
            }
            if metrics:
                rows.append((int(event["step"]), metrics))
        if not rows:
            return
        for backend in list(self._live):
            try:
                backend.log_many(rows)
            except Exception as exc:
                self._drop(backend, "failed to record metrics", exc)
        self.forwarded += len(rows)
        for backend in list(self._live):
            try:
                backend.flush()
            except Exception as exc:
                self._drop(backend, "failed to write metrics", exc)

    def _read_new(self) -> list[dict[str, Any]]:
        """METRIC events appended to the spool since the last read, past the last forwarded seq."""
        path = self.run_dir.events
        try:
            size = path.stat().st_size
            if size < self._offset:  # the reporter put a fresh spool back: read it again, seq filters
                self._offset, self._partial = 0, b""
            with path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # b"" after a complete last line, else a line still being written
        out: list[dict[str, Any]] = []
        for line in lines:
            try:
                event = json.loads(line)
                seq, step = int(event["seq"]), int(event["step"])
            except (ValueError, KeyError, TypeError):
                continue
            self._step = max(self._step, step)
            if seq <= self._seq:
                continue
            self._seq = seq
            if event.get("kind") == EventKind.METRIC.value and isinstance(event.get("payload"), dict):
                out.append(event)
        return out

    # ------------------------------------------------------------------------------------------ state

    def _read_state(self) -> dict[str, Any]:
        path = trackers_dir(self.run_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._state_saved < STATE_EVERY_S:
            return
        self._state_saved = now
        path = trackers_dir(self.run_dir) / STATE_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            state = {"forwarded_seq": self._seq, "run_ids": self._run_ids}
            tmp.write_text(json.dumps(state), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # a resumed attempt then starts new tracker runs: the metrics still flow


def _guarded_id(backend: Backend) -> str | None:
    try:
        return backend.run_id()
    except Exception:
        return None
