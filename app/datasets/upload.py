"""Receive a multipart upload by streaming its file part to a temporary file, with a size cap.

Starlette's form parser would take the whole body before anyone could refuse it, spooling it to an
anonymous temp file; here the cap is enforced while the bytes arrive: past settings.max_upload_bytes the
request is answered 413 at once and the partial file is removed. The sha256 is computed on the way.
A full disk is answered 507. The temp file is 0600 in a 0700 directory: uploads are other people's data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELD = "file"
MAX_TEXT_FIELD_BYTES = 4096
MAX_TEXT_FIELDS = 16
# room for the multipart boundaries, part headers and the small text fields around the file
FORM_OVERHEAD_BYTES = 64 * 1024
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class UploadRefused(HTTPException):
    """An upload that cannot be received (too large, not multipart, no file); detail says what to do."""


def make_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700: mkdir's mode is cut by the umask and leaves
    an existing directory as it was."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left" and "quota exceeded": answered 507, not 500."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full() -> UploadRefused:
    """The 507 for an upload that does not fit on the server's disk (no path in it: the client sees it)."""
    return UploadRefused(
        507,
        "the server's disk is full, so the upload could not be stored (nothing was kept); free space "
        "under the Tuneboard data directory or ask the operator to, then upload again",
    )


@dataclass
class ReceivedUpload:
    """The file part on disk (a temp file the caller must remove) and the form's text fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the temp file (idempotent)."""
        self.path.unlink(missing_ok=True)


class _Receiver:
    """python-multipart callbacks: the file part goes to `sink`, text fields to memory (capped)."""

    def __init__(self, sink: IO[bytes], limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.digest = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.too_large = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._part_name = ""
        self._is_file = False
        self._file_seen = False
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._part_name = ""
        self._is_file = False
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        # only the first part named "file" is the upload; any other file part is ignored
        self._is_file = self._part_name == FILE_FIELD and b"filename" in options and not self._file_seen
        if self._is_file:
            self._file_seen = True
            self.filename = options[b"filename"].decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.limit:
                self.too_large = True
                return
            self.digest.update(chunk)
            self.sink.write(chunk)
        elif len(self._text) + len(chunk) <= MAX_TEXT_FIELD_BYTES:
            self._text.extend(chunk)

    def on_part_end(self) -> None:
        # a few small text fields are all the form has; more are dropped, so memory stays bounded
        if not self._is_file and self._part_name and len(self.fields) < MAX_TEXT_FIELDS:
            self.fields.setdefault(self._part_name, self._text.decode("utf-8", "replace"))


def _too_large(limit: int, what: str) -> UploadRefused:
    return UploadRefused(
        413,
        f"{what} is over the upload limit of {limit} bytes; upload a smaller file or raise "
        "TUNEBOARD_MAX_UPLOAD_BYTES",
    )


async def receive_upload(request: Request, *, tmp_dir: Path, limit: int) -> ReceivedUpload:
    """Stream the `file` part of a multipart/form-data request into tmp_dir; 413 past `limit` bytes."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(
            415, "send the dataset as multipart/form-data with the file in a field named 'file'"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise _too_large(limit, f"the upload ({int(declared)} bytes)")
    try:
        make_private_dir(tmp_dir)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full() from None
        raise
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            receiver = _Receiver(sink, limit)
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": receiver.on_part_begin,
                    "on_part_data": receiver.on_part_data,
                    "on_part_end": receiver.on_part_end,
                    "on_header_field": receiver.on_header_field,
                    "on_header_value": receiver.on_header_value,
                    "on_header_end": receiver.on_header_end,
                    "on_headers_finished": receiver.on_headers_finished,
                },
            )
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit + FORM_OVERHEAD_BYTES:
                    raise _too_large(limit, "the upload")
                parser.write(chunk)
                if receiver.too_large:
                    raise _too_large(limit, "the file")
            parser.finalize()
        if receiver.filename is None:
            raise UploadRefused(422, "no file in the form: send it in a field named 'file'")
        return ReceivedUpload(
            path=path,
            filename=receiver.filename,
            size=receiver.size,
            sha256=receiver.digest.hexdigest(),
            fields=receiver.fields,
        )
    except FormParserError as exc:
        path.unlink(missing_ok=True)
        raise UploadRefused(
            400, f"the upload is not valid multipart/form-data ({exc}); send it again"
        ) from None
    except OSError as exc:
        path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full() from None
        raise
    except BaseException:
        # refused, malformed or the client went away: nothing of it stays on disk
        path.unlink(missing_ok=True)
        raise
