"""The finish webhook (app/scheduler/webhook.py) against a real HTTP receiver started here: each ending sent
once, signed, in order, across restarts; a failing receiver retried, then given up without stopping anything;
and end to end, the real app POSTs when a job run by the fake trainer ends."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.scheduler.webhook import FinishWebhook
from app.settings import Settings
from contract.config import parse_config
from tests.app.conftest import free_port
from tests.faults.harness import AppProcess, fake_config
from tests.waiting import wait_until

SECRET = "s3cret"


@dataclass
class Receiver:
    url: str
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failures_left: int = 0  # answer 500 this many times first


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec = box[0]
            if rec.failures_left > 0:
                rec.failures_left -= 1
                self.send_response(500)
            else:
                rec.posts.append((dict(self.headers), body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()


def finish(factory: sessionmaker[Session], name: str, status: str, at: datetime) -> int:
    with factory() as session, session.begin():
        job = service.create_job(session, config=parse_config({"name": name}), config_text="")
        job.status, job.finished_at = status, at.replace(tzinfo=None)
        return int(job.id)


def webhook_for(settings: Settings, factory: sessionmaker[Session], url: str) -> FinishWebhook:
    configured = settings.model_copy(update={"webhook_url": url, "webhook_secret": SECRET})
    return FinishWebhook(configured, factory, retry_waits_s=(0.05, 0.05))


def test_each_ending_is_sent_once_signed_and_in_order_across_restarts(
    settings: Settings, session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    finish(session_factory, "ended before the webhook existed", "succeeded", now - timedelta(hours=1))
    hook = webhook_for(settings, session_factory, receiver.url)
    assert hook.tick() == 0 and receiver.posts == []  # the past is not sent
    later = datetime.now(UTC) + timedelta(seconds=1)
    second = finish(session_factory, "b", "failed", later + timedelta(seconds=1))
    first = finish(session_factory, "a", "succeeded", later)
    finish(session_factory, "still running", "running", later)  # not ended: never sent
    assert hook.tick() == 2
    sent = [json.loads(body) for _, body in receiver.posts]
    assert [p["job"]["id"] for p in sent] == [first, second]  # in the order they ended
    assert [p["job"]["status"] for p in sent] == ["succeeded", "failed"]
    assert sent[0]["event"] == "job.finished" and sent[0]["url"].endswith(f"/jobs/{first}")
    for headers, body in receiver.posts:
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Tuneboard-Signature"] == f"sha256={expected}"
    assert hook.tick() == 0
    restarted = webhook_for(settings, session_factory, receiver.url)  # a new app process, same data dir
    assert restarted.tick() == 0 and len(receiver.posts) == 2
    assert oct((settings.data_dir / "webhook.json").stat().st_mode & 0o777) == "0o600"


def test_a_failing_receiver_is_retried_then_given_up_without_stopping_the_rest(
    settings: Settings, session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    hook = webhook_for(settings, session_factory, receiver.url)
    hook.tick()
    receiver.failures_left = 2
    at = datetime.now(UTC) + timedelta(seconds=1)
    retried = finish(session_factory, "retried", "succeeded", at)
    assert hook.tick() == 1
    assert [json.loads(b)["job"]["id"] for _, b in receiver.posts] == [retried] and hook.sent == 1
    down = webhook_for(settings, session_factory, f"http://127.0.0.1:{free_port()}/hook")  # nobody listens
    finish(session_factory, "lost", "cancelled", at + timedelta(seconds=1))
    assert down.tick() == 1 and down.given_up == 1  # logged, not raised, and not sent again
    assert down.tick() == 0


def test_the_app_posts_when_a_job_ends(tmp_path: Path, receiver: Receiver) -> None:
    app = AppProcess(tmp_path / "data", extra_env={"TUNEBOARD_WEBHOOK_URL": receiver.url})
    app.start()
    try:
        job_id = httpx.post(app.url + "/api/jobs", json=fake_config("sleep=0.3"), timeout=10).json()["id"]
        wait_until(lambda: receiver.posts, 60, "the webhook POST for the finished job")
        payload = json.loads(receiver.posts[0][1])
        assert payload["job"]["id"] == job_id and payload["job"]["status"] == "succeeded"
        assert "X-Tuneboard-Signature" not in receiver.posts[0][0]  # no secret configured: unsigned
    finally:
        app.stop()
