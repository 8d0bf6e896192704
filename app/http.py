"""Small HTTP helpers shared by the API routers, and the per-route request-body caps of the whole app."""

from __future__ import annotations

import re

from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

DEFAULT_BODY_CAP = 1024 * 1024  # JSON API bodies and forms that carry no file
LOGIN_BODY_CAP = 16 * 1024  # a password and a `next` path
FORM_SLACK = 64 * 1024  # multipart boundaries and the other fields around an uploaded file
INGEST_BYTES_PER_EVENT = 8192  # as app.metrics.api: a batch may hold max_events_per_batch events
_CONFIG_ROUTES = (
    re.compile(r"^/api/jobs/?$"),
    re.compile(r"^/api/estimate/?$"),
    re.compile(r"^/api/jobs/[^/]+/sweep/?$"),
)
# the new-job form and the sweep form carry a config url-encoded (up to 3 bytes per character)
_CONFIG_FORMS = (
    re.compile(r"^/jobs/new/?$"),
    re.compile(r"^/jobs/estimate/?$"),
    re.compile(r"^/jobs/[^/]+/sweep/?$"),
)
_UPLOADS = re.compile(r"^(/api)?/datasets/?$")
_INGEST = re.compile(r"^/api/jobs/[^/]+/events/?$")
_ARTIFACTS = re.compile(r"^/api/jobs/[^/]+/artifacts/.+$")
# try the adapter's JSON body: prompt and conversation (a character is at most 12 bytes escaped) + settings
_TRY = re.compile(r"^/api/jobs/[^/]+/try/?$")
TRY_SLACK = 16 * 1024


class BodyTooLarge(HTTPException):
    """A request body over its route's cap (413)."""

    def __init__(self, limit: int, what: str = "the request body", declared: int | None = None) -> None:
        size = f"is {declared} bytes" if declared is not None else "is over the limit"
        super().__init__(413, f"{what} {size}; the limit for this route is {limit} bytes")


def body_cap(settings: Settings, method: str, path: str) -> int:
    """The most bytes a request body to `method path` may have."""
    if method == "POST" and path.rstrip("/") == "/login":
        return LOGIN_BODY_CAP
    if method == "PUT" and _ARTIFACTS.match(path):
        return settings.max_artifact_bytes
    if method == "POST":
        if _UPLOADS.match(path):
            return settings.max_upload_bytes + FORM_SLACK
        if _INGEST.match(path):
            return settings.max_events_per_batch * INGEST_BYTES_PER_EVENT
        if any(p.match(path) for p in _CONFIG_ROUTES):
            return settings.max_config_bytes
        if any(p.match(path) for p in _CONFIG_FORMS):
            return 3 * settings.max_config_bytes + FORM_SLACK
        if _TRY.match(path):
            return 12 * settings.try_max_prompt_chars + TRY_SLACK
    return DEFAULT_BODY_CAP


class BodyLimitMiddleware:
    """ASGI middleware: 413 on a declared Content-Length over the route's cap before the route runs, and a
    stop at the cap for bodies that stream in without one (the route sees BodyTooLarge from receive())."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_cap(self.settings, str(scope["method"]).upper(), str(scope["path"]))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(
                    scope, receive, send
                )
                return
            if int(declared) > limit:
                await _refuse(BodyTooLarge(limit, declared=int(declared)), scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _refuse(exc, scope, receive, send)


async def _refuse(exc: BodyTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    # Connection: close: the rest of the body is never read, so the connection cannot carry another request
    response = JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)


async def read_body_limited(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what} is {int(declared)} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
