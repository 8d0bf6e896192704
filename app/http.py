"""Small HTTP helpers shared by the API routers."""

from __future__ import annotations

from fastapi import HTTPException, Request


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
