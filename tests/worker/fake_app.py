"""A stand-in for the app's event endpoint: a real HTTP server in a thread that stores events by seq."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "secret-token"


class FakeApp:
    """Stores events by seq like the app does (seq ≤ last stored is ignored) and records every request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stored: list[dict[str, Any]] = []
        self.requests: list[list[int]] = []
        self.refused: list[int] = []
        self.auth: list[str | None] = []
        self.control: str | None = None
        self.max_batch: int | None = None  # answer 413 above this many events
        self.poison_seq: int | None = None  # answer 422 to any batch holding this seq
        self.job_ended = False  # answer 409, as the app does once a job is terminal
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seqs = [e["seq"] for e in body["events"]]
                refusal = None
                if app.max_batch is not None and len(seqs) > app.max_batch:
                    refusal = 413
                elif app.poison_seq in seqs:
                    refusal = 422
                elif app.job_ended:
                    refusal = 409
                if refusal is not None:
                    with app.lock:
                        app.refused.append(refusal)
                    self.send_response(refusal)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                with app.lock:
                    app.auth.append(self.headers.get("Authorization"))
                    app.requests.append([e["seq"] for e in body["events"]])
                    last = app.stored[-1]["seq"] if app.stored else 0
                    app.stored.extend(e for e in body["events"] if e["seq"] > last)
                    answer = {"ok": True, **({"control": app.control} if app.control else {})}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def seqs(self) -> list[int]:
        with self.lock:
            return [e["seq"] for e in self.stored]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
