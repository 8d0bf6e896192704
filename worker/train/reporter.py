"""Event reporting from the training process: a spool file plus a background sender. Torch-free.

`Reporter.emit` appends one JSON line to RUN_DIR/events.jsonl (flushed) and wakes the sender; it never
touches the network, so a training step never waits on the app. The sender thread POSTs batches to
`{app_url}/api/jobs/{job_id}/events` about once a second, retries with capped exponential backoff while
the app is away, and sends from the oldest unacknowledged event, so nothing is lost, duplicated (the app
ignores seq ≤ its last stored seq) or reordered. The acknowledged seq is kept in RUN_DIR/events.acked so
a relaunched worker re-sends only what the app has not confirmed.

The sender never dies of an error: each round is guarded. If RUN_DIR is removed while training, the
events not yet confirmed are still in memory; the reporter puts RUN_DIR and a fresh spool holding them
back (the job's files belong there, and the app reads undelivered events from the spool when the process
ends), says so in a warning event, and keeps sending. Only events that can be neither delivered nor
spooled are lost; `delivery_problem()` then names how many, and the worker fails the job with it.

When posts fail, the sender re-reads RUN_DIR/app_url: an app that took the job over (a standby on the
same data directory) writes its address there, and the reporter follows it. A worker on a machine that
does not share the run directory (Ray, remote mode) never sees that file and keeps its job.json address.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from contract.protocol import EventKind, make_event, read_spool
from contract.rundir import RunDir
from worker.train.log import say

SEND_INTERVAL_S = 1.0  # batch window of the sender
HEARTBEAT_INTERVAL_S = 5.0  # an idle worker still says it is alive this often
BACKOFF_CAP_S = 10.0
MAX_BATCH = 500
HTTP_TIMEOUT_S = 10.0
MAX_APP_URL_BYTES = 2048


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
        self.failure: str | None = None  # set if the sender thread ever ended without being closed
        self.app_ended_job: str | None = None  # the app answered 409: it had settled this job already
        self._spool_on_disk = True  # False while the events file is gone and could not be put back
        self._run_dir_removed_warned = False
        self._removed_at_step: int | None = None  # the step at which RUN_DIR was found removed
        self._lost = 0  # events neither delivered nor spooled when close() returned
        self._unspooled: set[int] = set()  # seqs whose spool write failed (kept in memory only)

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
            self._job_id = job["job_id"]
            self._base_url = str(job["app_url"]).rstrip("/")
            self._token = str(job.get("token", ""))
            self._thread = threading.Thread(target=self._run_guarded, name="tuneboard-reporter", daemon=True)
            self._thread.start()

    @property
    def _url(self) -> str:
        return f"{self._base_url}/api/jobs/{self._job_id}/events"

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
            line = json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n"
            try:
                self._spool.write(line)
                self._spool.flush()
            except OSError:
                if self._thread is None:
                    raise  # standalone: the spool is the only record, its failure is the caller's
                # (a full disk) the event stays in memory, pending below; close() counts it if unsent
                self._unspooled.add(seq)
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
            if self._pending and self._thread is not None:
                # the app reads undelivered events from the spool when the process ends: make sure the
                # spool still holds them (RUN_DIR may have been removed meanwhile)
                self._keep_spool_on_disk()
                if self._spool_on_disk:
                    self._lost = sum(1 for e in self._pending if e["seq"] in self._unspooled)
                else:
                    self._lost = len(self._pending)
            try:
                self._spool.close()
            except OSError:
                pass  # a failed final flush: those events are counted in _lost already or in pending
            return not self._pending

    def delivery_problem(self) -> str | None:
        """After close(): why the app will not see everything this run said, or None when it will."""
        if self.app_ended_job is not None:
            return f"the app had already ended this job and refused its events: {self.app_ended_job}"
        if self._lost and self._run_dir_was_removed:
            return f"run directory removed while training: {self._lost} events not delivered"
        if self._lost:
            return f"{self._lost} events not delivered: the app was away and the spool could not be written"
        if self.failure is not None:
            return f"the event reporter stopped: {self.failure}"
        return None

    # ------------------------------------------------------------------------------------------ sender

    def _run_guarded(self) -> None:
        """The sender thread: _run, and if it ever ends by an error, a failure the worker reports."""
        try:
            self._run()
        except BaseException as exc:  # noqa: B036 (a dying thread must leave a reason, whatever killed it)
            self.failure = f"{type(exc).__name__}: {exc}"
            say(f"tuneboard reporter: the sender stopped: {self.failure}")
            raise

    def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                finished, backoff = self._send_round(backoff)
            except Exception as exc:  # one bad round (a full disk, a removed directory) must not end sending
                message = f"{type(exc).__name__}: {exc}"
                if message != self.last_error:
                    say(f"tuneboard reporter: {message}; retrying")
                self.last_error = message
                with self._lock:
                    if self._closing:
                        return
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, self._backoff_cap)
                continue
            if finished:
                return

    def _send_round(self, backoff: float) -> tuple[bool, float]:
        """One round of the sender: (whether it is done, the backoff for the next failed post)."""
        with self._lock:
            if not self._pending and not self._closing:
                self._wake.wait(self._send_interval)
            self._keep_spool_on_disk()
            closing = self._closing
            batch = [self._pending[i] for i in range(min(self._batch_limit, len(self._pending)))]
            idle = time.monotonic() - self._last_emit
            warn_removed = not self._run_dir_removed_warned and self._run_dir_was_removed
        if warn_removed:
            self._run_dir_removed_warned = True
            say(self._removal_message(), "warning", reporter=self, step=self._step)
            return False, backoff
        if not batch:
            if closing:
                return True, backoff
            if idle >= self._heartbeat_interval:
                self.emit(EventKind.HEARTBEAT, self._step, {})
            return False, backoff
        result = self._post(batch)
        if result == "ended":
            # Retrying would never succeed and training on would waste the GPU: stop the run gracefully (the
            # trainer checkpoints on cancel) and stop sending; the spool keeps what the app did not take.
            self.app_ended_job = self.last_error
            say(
                f"tuneboard reporter: the app no longer takes this job's events ({self.last_error}); "
                "stopping the run"
            )
            self.cancel_requested.set()
            return True, backoff
        if result == "too_big" or (result == "rejected" and len(batch) > 1):
            # Smaller batches: fits the app's limit, and isolates an event the app cannot accept.
            self._batch_limit = max(1, len(batch) // 2)
            return False, backoff
        if result == "rejected":
            # The app refuses this one event for good (a bug on our side): skip it rather than
            # wedge every later event behind it. It stays in the spool for inspection.
            say(f"tuneboard reporter: the app rejected event {batch[0]['seq']}: {self.last_error}")
        if result in ("ok", "rejected"):
            if result == "ok":
                self._batch_limit = min(MAX_BATCH, self._batch_limit * 2)
            with self._lock:
                top = batch[-1]["seq"]
                while self._pending and self._pending[0]["seq"] <= top:
                    self._pending.popleft()
                self._acked = max(self._acked, top)
                if self._unspooled:
                    self._unspooled = {seq for seq in self._unspooled if seq > top}
                self._write_acked(self._acked)
                more = bool(self._pending)
            if not more and not closing:
                time.sleep(self._send_interval)  # batch what the next second brings
            return False, 0.5
        # Not acked. The app may have moved (a standby took over at another address): follow it at once.
        if self._follow_announced_app():
            return False, 0.5
        # Keep the batch and retry. close() bounds the wait by joining with a timeout.
        with self._lock:
            self._wake.wait(backoff)  # close() wakes us early for a last attempt
        return False, min(backoff * 2, self._backoff_cap)

    # ------------------------------------------------------------------------------------------ the app

    def _follow_announced_app(self) -> bool:
        """Switch to the address in RUN_DIR/app_url when it is trustworthy and new; True if switched."""
        url = read_announced_app_url(self.run_dir)
        if url is None or url == self._base_url:
            return False
        say(f"tuneboard reporter: the app now answers at {url} (from {self.run_dir.app_url.name})")
        self._base_url = url
        return True

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
            if exc.code == 409:
                return "ended"  # the app has settled this job (e.g. failed it as lost): nothing more counts
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
        """Best effort: the file only spares a relaunch some re-sending; the app ignores repeats anyway."""
        tmp = self._acked_path.with_suffix(".acked.tmp")
        try:
            tmp.write_text(str(seq), encoding="utf-8")
            os.replace(tmp, self._acked_path)
        except OSError:
            pass  # RUN_DIR removed or a full disk: the sender notices the spool itself, next round

    @property
    def _run_dir_was_removed(self) -> bool:
        return self._removed_at_step is not None

    def _removal_message(self) -> str:
        noticed = f"the run directory was removed while training (noticed at step {self._removed_at_step})"
        if not self._spool_on_disk:
            return f"{noticed} and cannot be put back; events are kept in memory until the app has them"
        return (
            f"{noticed}; it was put back with the events not yet delivered, so none is lost, but "
            "checkpoints and logs written before that are gone"
        )

    def _spool_still_linked(self) -> bool:
        """Whether our open events file is still in RUN_DIR (an unlinked file takes writes and loses them)."""
        try:
            return os.fstat(self._spool.fileno()).st_nlink > 0 and self.run_dir.events.exists()
        except (OSError, ValueError):
            return False

    def _keep_spool_on_disk(self) -> None:
        """(Under the lock.) If the spool was removed, put RUN_DIR and a spool of the pending events back."""
        if self._spool.closed or self._spool_still_linked():
            return
        if self._removed_at_step is None:
            self._removed_at_step = self._step
        try:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
            fresh = self.run_dir.events.open("a", encoding="utf-8")
        except OSError:
            self._spool_on_disk = False  # try again next round; the events wait in memory
            return
        try:
            for event in self._pending:
                fresh.write(json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n")
            fresh.flush()
        except OSError:
            fresh.close()
            self._spool_on_disk = False
            return
        old, self._spool = self._spool, fresh
        self._unspooled.clear()  # every pending event is in the new spool
        try:
            old.close()
        except OSError:
            pass  # its buffer held nothing we need: those events are pending and now in the new spool
        self._spool_on_disk = True
        self._write_acked(self._acked)

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


def read_announced_app_url(run_dir: RunDir) -> str | None:
    """The app address in RUN_DIR/app_url, or None when absent, malformed or not written by the app.

    The job token goes to this address, so the file counts only if nobody but its owner can write it and
    its owner is whoever wrote job.json (the app that holds the token).
    """
    path: Path = run_dir.app_url
    try:
        info = os.stat(path, follow_symlinks=False)
        app = os.stat(run_dir.job)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o022 or info.st_uid != app.st_uid:
        return None
    if info.st_size > MAX_APP_URL_BYTES:
        return None
    try:
        url = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return url.rstrip("/")
