"""A POST to the operator's webhook when a job ends, so a chat channel or a script hears of it.

Settings: TUNEBOARD_WEBHOOK_URL (and optionally TUNEBOARD_WEBHOOK_SECRET). Only the operator sets the URL: a
job's config cannot name one, so no job can make the app call into its network. The body is JSON:
{"event": "job.finished", "job": <the job's summary as GET /api/jobs/{id} shows it>, "url": <its page>};
with a secret, `X-Tuneboard-Signature: sha256=<hex HMAC-SHA256 of the body>` lets the receiver check it.

Exactly once per ending, across restarts: the active scheduler alone sends (a standby does not), in the order
jobs ended, and keeps its place, the (finished_at, id) of the last job handled, in DATA_DIR/webhook.json.
Jobs that ended before the webhook was first configured are not sent. Logs name the receiver's host only:
webhook URLs often carry their secret in the path. A receiver that fails (an error status,
no answer in 10 s) is retried a few times with growing waits, then given up with a log line; a failed webhook
never delays the scheduler or the job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.schemas import as_utc, job_summary
from app.jobs.status import TERMINAL
from app.models import Job
from app.private import FILE_MODE
from app.settings import Settings

log = logging.getLogger("tuneboard.webhook")

TIMEOUT_S = 10.0
RETRY_WAITS_S = (1.0, 4.0, 15.0)  # after the first try; then the ending is given up (logged)
BATCH = 50  # endings handled per pass


class FinishWebhook:
    """Sends each job ending once to settings.webhook_url; call tick() from the active scheduler."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        retry_waits_s: tuple[float, ...] = RETRY_WAITS_S,
    ) -> None:
        assert settings.webhook_url
        self.url = settings.webhook_url
        self.secret = (settings.webhook_secret or "").encode()
        self.public_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.session_factory = session_factory
        self.state_path: Path = settings.data_dir / "webhook.json"
        self.retry_waits_s = retry_waits_s
        self.sent = 0
        self.given_up = 0

    # --- where we are ------------------------------------------------------------------------------------
    def _load_mark(self) -> tuple[datetime, int]:
        try:
            raw = json.loads(self.state_path.read_text())
            return datetime.fromisoformat(raw["finished_at"]), int(raw["id"])
        except FileNotFoundError:
            mark = (datetime.now(UTC), 2**31)  # first configured: only endings from now on
            self._save_mark(mark)
            return mark
        except (ValueError, KeyError, TypeError):
            log.warning("webhook: %s is unreadable; starting from now", self.state_path)
            mark = (datetime.now(UTC), 2**31)
            self._save_mark(mark)
            return mark

    def _save_mark(self, mark: tuple[datetime, int]) -> None:
        """Written whole or not at all (a crash mid-write must not lose the place), owner-only."""
        text = json.dumps({"finished_at": mark[0].isoformat(), "id": mark[1]}).encode()
        tmp = self.state_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)

    # --- what is due -------------------------------------------------------------------------------------
    def _due(self, mark: tuple[datetime, int]) -> list[dict[str, Any]]:
        at, last_id = mark
        naive = at.astimezone(UTC).replace(tzinfo=None)  # SQLite stores naive UTC; PostgreSQL compares fine
        with self.session_factory() as session:
            jobs = session.scalars(
                select(Job)
                .where(Job.status.in_([s.value for s in TERMINAL]), Job.finished_at.is_not(None))
                .where(or_(Job.finished_at > naive, and_(Job.finished_at == naive, Job.id > last_id)))
                .order_by(Job.finished_at, Job.id)
                .limit(BATCH)
            ).all()
            return [job_summary(job) | {"_finished_at": as_utc(job.finished_at)} for job in jobs]

    # --- sending -----------------------------------------------------------------------------------------
    def body(self, summary: dict[str, Any]) -> bytes:
        job = {k: v for k, v in summary.items() if not k.startswith("_")}
        payload = {"event": "job.finished", "job": job, "url": f"{self.public_url}/jobs/{job['id']}"}
        return json.dumps(payload, sort_keys=True).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "tuneboard-webhook"}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Tuneboard-Signature"] = f"sha256={digest}"
        return headers

    def _post(self, client: httpx.Client, body: bytes) -> str | None:
        """None when the receiver took it, else what went wrong."""
        try:
            answer = client.post(self.url, content=body, headers=self.headers(body))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if answer.is_success else f"HTTP {answer.status_code}"

    def _deliver(self, client: httpx.Client, summary: dict[str, Any]) -> None:
        body = self.body(summary)
        problem = self._post(client, body)
        for wait in self.retry_waits_s:
            if problem is None:
                break
            time.sleep(wait)
            problem = self._post(client, body)
        if problem is None:
            self.sent += 1
        else:
            self.given_up += 1
            log.warning(
                "webhook: job %s ended %s; %s did not take it (%s)",
                *(summary["id"], summary["status"], urlsplit(self.url).netloc, problem),
            )

    def tick(self) -> int:
        """Send every ending since the mark, oldest first, moving the mark after each; returns how many."""
        mark = self._load_mark()
        handled = 0
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while due := self._due(mark):
                for summary in due:
                    self._deliver(client, summary)
                    mark = (summary["_finished_at"], int(summary["id"]))
                    self._save_mark(mark)
                    handled += 1
        return handled
