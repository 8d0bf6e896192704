"""A local stand-in of the Hugging Face Hub's upload API, enough for huggingface_hub's create_repo and
upload_folder of small files: repo creation, the model card check, the pre-upload check (every file
"regular", no LFS) and the NDJSON commit. It records each request's path, its Authorization header and
the files committed."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubRecord:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, authorization
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> create_repo body
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> content


def _handler(record: HubRecord) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            record.requests.append(("GET", self.path, self.headers.get("Authorization")))
            self._send(404, {"error": "not in the stand-in"})

        def do_POST(self) -> None:
            body = self._body()
            record.requests.append(("POST", self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != "Bearer hf_standintoken0123456789":
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return
            path = self.path.split("?", 1)[0]
            if path == "/api/repos/create":
                spec = json.loads(body)
                repo = f"{spec.get('organization') or 'me'}/{spec['name']}"
                record.repos[repo] = spec
                self._send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo, "id": repo})
            elif path == "/api/validate-yaml":  # the model card's front matter
                self._send(200, {"errors": [], "warnings": []})
            elif "/preupload/" in path:
                files = json.loads(body).get("files", [])
                answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                self._send(200, {"files": answer, "commitOid": "0" * 40})
            elif "/commit/" in path:
                repo = path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        value = item["value"]
                        content = base64.b64decode(value["content"])
                        record.files.setdefault(repo, {})[value["path"]] = content
                host = self.headers["Host"]
                self._send(200, {"commitUrl": f"http://{host}/{repo}/commit/1", "commitOid": "1" * 40})
            else:
                self._send(404, {"error": f"{path} is not in the stand-in"})

    return Handler


@contextmanager
def hub_standin() -> Iterator[tuple[str, HubRecord]]:
    """(its URL, what it received) while it serves on a free loopback port."""
    record = HubRecord()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(record))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", record
    finally:
        server.shutdown()
        server.server_close()
