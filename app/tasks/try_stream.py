"""Try the adapter: queue a generation task and stream its answer from the file its process writes.

The placed process (worker.tasks.generate) appends one JSON object a line to an output file under
DATA_DIR/tmp; this module tails that file and hands each object on, ending with an error of its own when
the process ends without a last word, writes an overlong line or runs past its timeout. The TaskManager
reserves the job and queues, cancels and settles the task row; here is only what one try streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from app.jobs.status import TERMINAL, JobStatus

if TYPE_CHECKING:  # the manager calls in here: a runtime import back would be a cycle
    from app.tasks.manager import TaskClaim, TaskManager

TRY_MODULE = "worker.tasks.generate"
MAX_LINE_BYTES = 1024 * 1024
# the scheduler kills a try this long after the stream's own deadline: only a stream that died needs it
TRY_BACKSTOP_S = 10.0
POLL_S = 0.05  # how often a try's output file is read for new tokens
STATUS_POLL_S = 0.25  # how often its row is read while nothing new arrives


async def generation_lines(
    tasks: TaskManager,
    claim: TaskClaim,
    run_dir: Path,
    *,
    config: dict[str, Any],
    prompt: str,
    max_new_tokens: int,
    raw: bool = False,
    idle_every_s: float = 15.0,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Queue the generation task and yield its JSON lines; None every `idle_every_s` of silence.

    However this ends (done, error, timeout, or the consumer stopping early: a client that disconnected
    cancels the response and lands in `finally`), the task is cancelled, its process group killed by
    the scheduler, its files removed and the job freed.
    """
    claim.streaming = True
    files: list[Path] = []
    try:
        files.append(tasks.write_task_input(config, "try"))
        fd, name = tempfile.mkstemp(prefix="try-", suffix=".txt", dir=tasks.tmp_dir())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(prompt)
        files.append(Path(name))
        fd, out_name = tempfile.mkstemp(prefix="try-out-", suffix=".jsonl", dir=tasks.tmp_dir())
        os.close(fd)
        files.append(Path(out_name))
        args = ["--config", str(files[0]), "--prompt-file", name, "--max-new-tokens", str(max_new_tokens)]
        if raw:
            args.append("--raw")
        await anyio.to_thread.run_sync(
            lambda: tasks.queue_task(
                claim,
                run_dir,
                module=tasks.try_module,
                args=args,
                input_path=str(files[0]),
                output_path=out_name,
                log_path=str(run_dir / "try.log"),
                timeout_s=claim.timeout_s + TRY_BACKSTOP_S,
            )
        )
        async for message in _stream(tasks, claim, Path(out_name), idle_every_s):
            yield message
            if message is not None and (message.get("done") or "error" in message):
                return
    finally:
        with anyio.CancelScope(shield=True):
            if claim.task_id is not None:
                await anyio.to_thread.run_sync(tasks.cancel_task, claim.task_id)
                await tasks.wait_settled(claim.task_id)
        for path in files:
            path.unlink(missing_ok=True)
        tasks.release(claim)


async def _stream(
    tasks: TaskManager, claim: TaskClaim, out: Path, idle_every_s: float
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """The JSON lines the placed task writes to `out`, ending with an error when it ends without one."""
    assert claim.task_id is not None
    task_id = claim.task_id
    deadline: float | None = None  # from the launch: time spent waiting for a GPU does not count
    last_yield = last_check = time.monotonic()
    status: str = JobStatus.QUEUED.value
    exit_code: int | None = None
    pending = b""
    offset = 0
    await tasks.nudge()
    while True:
        now = time.monotonic()
        if deadline is None or now - last_check >= STATUS_POLL_S:
            last_check = now
            row = await anyio.to_thread.run_sync(tasks.task_row, task_id)
            if row is None:
                yield {"error": "the generation task was removed (its job was deleted)"}
                return
            status, pid, exit_code = row
            # launched: a local process has a pid; a Ray job has none here, its row says running
            launched = pid is not None or status in (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)
            if launched and deadline is None:
                claim.pid = pid
                deadline = now + claim.timeout_s
        if deadline is None and JobStatus(status) not in TERMINAL:
            if now - last_yield >= idle_every_s:  # waiting for a slot: keep the client's connection
                last_yield = now
                yield None
            await asyncio.sleep(POLL_S)
            await tasks.nudge()
            continue
        chunk = await anyio.to_thread.run_sync(_read_from, out, offset)
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            yield {"error": "the generation process wrote an overlong line; see try.log in the run directory"}
            return
        for line in lines:
            message = _json_object(line)
            if message is None:
                continue  # a library printed to stdout: not ours
            last_yield = time.monotonic()
            yield message
            if message.get("done") or "error" in message:
                return
        if chunk:
            continue
        if JobStatus(status) in TERMINAL:
            yield {
                "error": f"the generation process ended (exit code {exit_code}) without finishing; "
                "see try.log in the run directory"
            }
            return
        if deadline is not None and time.monotonic() > deadline:
            yield {
                "error": f"no complete answer within {claim.timeout_s:g} s (TUNEBOARD_TRY_TIMEOUT_S); "
                "ask for fewer new tokens or raise the timeout"
            }
            return
        if time.monotonic() - last_yield >= idle_every_s:
            last_yield = time.monotonic()
            yield None  # still loading or thinking: the caller sends a keep-alive
        if not tasks.has_scheduler_loop() and time.monotonic() - last_check >= STATUS_POLL_S:
            await tasks.nudge()  # no scheduler loop here: notice the process's end ourselves
        await asyncio.sleep(POLL_S)


def _read_from(path: Path, offset: int) -> bytes:
    """The bytes of `path` after `offset` (at most a few MB a call)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(4 * MAX_LINE_BYTES)
    except FileNotFoundError:
        return b""


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
