"""Check and stage an upload without freezing the app.

Parsing a file is CPU work: it runs in a worker thread (never on the event loop), at most
settings.dataset_checks_max_concurrent at once (an upload waits settings.dataset_check_queue_s for a
slot, then gets 503 with Retry-After), and it holds no request session: the database is touched only by
the short insert afterwards, so /api/health, job lists and the workers' ingest never wait behind uploads.
A client that leaves stops its check: a watcher sets the stop flag the checker polls between rows.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
from fastapi import Request

from app.datasets import service
from app.datasets.upload import ReceivedUpload, UploadRefused
from app.settings import Settings
from contract.datasets import CheckedDataset

DISCONNECT_POLL_S = 0.2
RETRY_AFTER_S = 5


_gc_lock = threading.Lock()
_gc_holders = 0


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a check builds millions of row objects (refcounting
    still frees them). Each full collection would scan every row read so far with the GIL held: measured,
    pauses of 0.6 s (30 MB JSONL) to 1.5 s (100 MB) for every request of the app, and 60% of the check's
    time (bench/dataset_intake.py). Rows carry no reference cycles, so nothing piles up meanwhile. Counted:
    the collector comes back when the last concurrent check ends."""
    global _gc_holders
    with _gc_lock:
        _gc_holders += 1
        if _gc_holders == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.enable()


class ClientGone(UploadRefused):
    """The client disconnected while its upload was checked; the check was stopped and nothing stored."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection; the upload was not checked or stored")


def check_slots(request: Request, settings: Settings) -> anyio.Semaphore:
    """The app's check slots (one semaphore per app and event loop: tests run several loops)."""
    state = request.app.state
    loop = asyncio.get_running_loop()
    found: tuple[asyncio.AbstractEventLoop, anyio.Semaphore] | None
    found = getattr(state, "dataset_check_slots", None)
    if found is None or found[0] is not loop:
        found = (loop, anyio.Semaphore(settings.dataset_checks_max_concurrent))
        state.dataset_check_slots = found
    return found[1]


def _busy(settings: Settings) -> UploadRefused:
    return UploadRefused(
        503,
        f"{settings.dataset_checks_max_concurrent} uploads are being checked and this one waited "
        f"{settings.dataset_check_queue_s:g} s for its turn; send it again in a moment, or raise "
        "TUNEBOARD_DATASET_CHECKS_MAX_CONCURRENT",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def check_and_stage(
    request: Request, settings: Settings, upload: ReceivedUpload, staging: Path
) -> CheckedDataset:
    """Check `upload` and write its data file into `staging`, in a worker thread, when a slot is free.

    Raises DatasetError (bad rows), UploadRefused 503 (no slot in time), ClientGone (the client left),
    OSError (the disk).
    """
    stop = threading.Event()
    gone = False
    waiting = anyio.CancelScope()
    outcome: CheckedDataset | BaseException | None = None

    async def watch_client() -> None:
        nonlocal gone
        try:
            while not await request.is_disconnected():
                await anyio.sleep(DISCONNECT_POLL_S)
            gone = True
            waiting.cancel()  # stop waiting for a slot; a running check sees `stop` instead
        finally:
            stop.set()  # also when cancelled from outside (shutdown): the thread ends at its next row

    def work() -> CheckedDataset:
        with no_cyclic_gc():
            checked = service.check_upload(upload, stop)
            service.stage_files(upload, checked, staging, stop)
            # staged: the rows are not needed any more, and must be gone before the collector is back
            checked.rows, checked.lines = [], []
        return checked

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_client)
        slots = check_slots(request, settings)
        acquired = False
        with waiting, anyio.move_on_after(settings.dataset_check_queue_s):
            await slots.acquire()
            acquired = True
        if acquired:
            try:
                # not cancellable once started (a thread cannot be killed); `stop` ends it early instead
                outcome = await anyio.to_thread.run_sync(work)
            except Exception as exc:  # raised below, outside the task group (it would wrap it in a group)
                outcome = exc
            finally:
                slots.release()
        elif not gone:
            outcome = _busy(settings)
        tg.cancel_scope.cancel()  # the watcher
    if gone:
        raise ClientGone
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome is not None
    return outcome
