"""Event reporting from the training process: a spool file plus a background sender. Torch-free.

`Reporter.emit` appends one JSON line to RUN_DIR/events.jsonl (flushed) and wakes the sender; it never
touches the network, so a training step never waits on the app. The sender thread POSTs batches to
`{app_url}/api/jobs/{job_id}/events` about once a second, retries with capped exponential backoff while
the app is away, and sends from the oldest unacknowledged event, so nothing is lost, duplicated (the app
ignores seq ≤ its last stored seq) or reordered. The acknowledged seq is kept in RUN_DIR/events.acked so
a relaunched worker re-sends only what the app has not confirmed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from worker.protocol import EventKind, RunDir, make_event, read_spool

SEND_INTERVAL_S = 1.0  # batch window of the sender
HEARTBEAT_INTERVAL_S = 5.0  # an idle worker still says it is alive this often
BACKOFF_CAP_S = 10.0
MAX_BATCH = 500
HTTP_TIMEOUT_S = 10.0


class Reporter:
    """Spools events to RUN_DIR/events.jsonl and, when `job` is given, streams them to the app."""

    def __init__(
        self,
        run_dir: RunDir,
        job: dict[str, Any] | None,
        *,
        send_interval: float = SEND_INTERVAL_S,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        backoff_cap: float = BACKOFF_CAP_S,
    ) -> None:
        self.run_dir = run_dir
        self.job = job
        self.cancel_requested = threading.Event()  # set when the app answers {"control": "cancel"}
        self._send_interval = send_interval
        self._heartbeat_interval = heartbeat_interval
        self._backoff_cap = backoff_cap
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._last_emit = time.monotonic()
        self._step = 0  # the latest step seen, for heartbeats
        self.last_error: str | None = None  # the most recent send failure, for diagnostics

        run_dir.root.mkdir(parents=True, exist_ok=True)
        existing = read_spool(run_dir.events)
        self._truncate_torn_tail(len(existing))
        self._next_seq = (existing[-1]["seq"] + 1) if existing else 1
        self._acked = self._read_acked()
        # Events the app has not confirmed yet, oldest first (a relaunch re-sends them).
        self._pending: deque[dict[str, Any]] = deque(e for e in existing if e["seq"] > self._acked)
        self._spool = run_dir.events.open("a", encoding="utf-8")
        self._thread: threading.Thread | None = None
        self._batch_limit = MAX_BATCH
        if job is not None:
            self._url = f"{str(job['app_url']).rstrip('/')}/api/jobs/{job['job_id']}/events"
            self._token = str(job.get("token", ""))
            self._thread = threading.Thread(target=self._run, name="tuneboard-reporter", daemon=True)
            self._thread.start()

    @property
    def acked_seq(self) -> int:
        """The highest seq the app has confirmed (0 when none)."""
        with self._lock:
            return self._acked

    @property
    def pending_count(self) -> int:
        """Events spooled but not yet confirmed by the app."""
        with self._lock:
            return len(self._pending)

    def emit(self, kind: EventKind | str, step: int, payload: dict[str, Any] | None = None) -> int:
        """Spool one event and queue it for sending; returns its seq. Never blocks on the network."""
        with self._lock:
            if self._spool.closed:  # after close(): a late heartbeat from the sender thread
                return -1
            seq = self._next_seq
            self._next_seq += 1
            event = make_event(seq, EventKind(kind), int(step), payload or {}, time.time())
            # allow_nan=False: a stray float NaN must be encoded by the caller (protocol.encode_number)
            self._spool.write(json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n")
            self._spool.flush()
            self._last_emit = time.monotonic()
            self._step = max(self._step, int(step))
            if self._thread is not None:
                self._pending.append(event)
                self._wake.notify()
            return seq

    @property
    def last_step(self) -> int:
        """The highest step any event carried so far (the final summary is filed under it)."""
        return self._step

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the sender after flushing what it can within `timeout`; True when everything was acked."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._spool.close()
            return not self._pending

    # ------------------------------------------------------------------------------------------ sender

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                if not self._pending and not self._closing:
                    self._wake.wait(self._send_interval)
                closing = self._closing
                batch = [self._pending[i] for i in range(min(self._batch_limit, len(self._pending)))]
                idle = time.monotonic() - self._last_emit
            if not batch:
                if closing:
                    return
                if idle >= self._heartbeat_interval:
                    self.emit(EventKind.HEARTBEAT, self._step, {})
                continue
            result = self._post(batch)
            if result == "too_big" or (result == "rejected" and len(batch) > 1):
                # Smaller batches: fits the app's limit, and isolates an event the app cannot accept.
                self._batch_limit = max(1, len(batch) // 2)
                continue
            if result == "rejected":
                # The app refuses this one event for good (a bug on our side): skip it rather than
                # wedge every later event behind it. It stays in the spool for inspection.
                print(
                    f"tuneboard reporter: the app rejected event {batch[0]['seq']}: {self.last_error}",
                    file=sys.stderr,
                )
            if result in ("ok", "rejected"):
                backoff = 0.5
                if result == "ok":
                    self._batch_limit = min(MAX_BATCH, self._batch_limit * 2)
                with self._lock:
                    top = batch[-1]["seq"]
                    while self._pending and self._pending[0]["seq"] <= top:
                        self._pending.popleft()
                    self._acked = max(self._acked, top)
                    self._write_acked(self._acked)
                    more = bool(self._pending)
                if not more and not closing:
                    time.sleep(self._send_interval)  # batch what the next second brings
                continue
            # Not acked: keep the batch and retry. close() bounds the wait by joining with a timeout.
            with self._lock:
                self._wake.wait(backoff)  # close() wakes us early for a last attempt
            backoff = min(backoff * 2, self._backoff_cap)

    def _post(self, batch: list[dict[str, Any]]) -> str:
        """POST one batch: "ok", "retry" (app away or failing), "too_big" (413) or "rejected" (422)."""
        body = json.dumps({"events": batch}, allow_nan=False).encode("utf-8")
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            self.last_error = f"HTTP {exc.code}: {detail}"
            if exc.code == 413:
                return "too_big"
            if exc.code == 422:
                return "rejected"
            return "retry"  # 401/403/404/5xx: the app may come back or be fixed; keep everything
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return "retry"
        try:
            answer = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            answer = {}
        if isinstance(answer, dict) and answer.get("control") == "cancel":
            self.cancel_requested.set()
        self.last_error = None
        return "ok"

    # ------------------------------------------------------------------------------------------ files

    @property
    def _acked_path(self) -> Any:
        return self.run_dir.root / "events.acked"

    def _read_acked(self) -> int:
        try:
            return int(self._acked_path.read_text(encoding="utf-8").strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_acked(self, seq: int) -> None:
        tmp = self._acked_path.with_suffix(".acked.tmp")
        tmp.write_text(str(seq), encoding="utf-8")
        os.replace(tmp, self._acked_path)

    def _truncate_torn_tail(self, complete: int) -> None:
        """Drop a half-written last line left by a kill, so the next append starts on a fresh line."""
        path = self.run_dir.events
        if not path.exists():
            return
        with path.open("rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        keep = b"".join(line + b"\n" for line in lines[:complete])
        if keep != data:
            with path.open("wb") as fh:
                fh.write(keep)
