"""Try the adapter: queue a generation task and stream its answer from the file its process writes.

The placed process (worker.tasks.generate) appends one JSON object a line to an output file under
DATA_DIR/tmp; this module tails that file and hands each object on, ending with an error of its own when
the process ends without a last word, writes an overlong line or runs past its timeout. Until the process
speaks, it says itself what the try waits for: {"stage": STAGE_WAITING} while the task waits for a slot,
{"stage": STAGE_STARTING} once it was launched (the process then reports its own stages). The try's
parameters (prompt, conversation so far, decoding) are checked here too (parse_try_request). The TaskManager
reserves the job and queues, cancels and settles the task row; here is only what one try streams.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
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
STAGE_WAITING = "waiting for a free CPU/GPU slot"
STAGE_STARTING = "starting the generation process"


@dataclass(frozen=True)
class Decoding:
    """How one try decodes: greedy at temperature 0, else sampled with top_p and seeded with seed."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    raw: bool = False

    def args(self) -> list[str]:
        """The generation process's command-line arguments for these settings."""
        args = [
            "--max-new-tokens",
            str(self.max_new_tokens),
            "--temperature",
            repr(float(self.temperature)),
            "--top-p",
            repr(float(self.top_p)),
            "--seed",
            str(self.seed),
        ]
        return [*args, "--raw"] if self.raw else args


async def generation_lines(
    tasks: TaskManager,
    claim: TaskClaim,
    run_dir: Path,
    *,
    config: dict[str, Any],
    prompt: str,
    decoding: Decoding,
    history: list[dict[str, str]] | None = None,
    idle_every_s: float = 15.0,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Queue the generation task and yield its JSON lines; None every `idle_every_s` of silence.

    `history` (earlier {role, content} turns, already validated) goes to the process in a file of its own.

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
        args = ["--config", str(files[0]), "--prompt-file", name, *decoding.args()]
        if history:
            fd, history_name = tempfile.mkstemp(prefix="try-history-", suffix=".json", dir=tasks.tmp_dir())
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(history, fh)
            files.append(Path(history_name))
            args += ["--history-file", history_name]
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
    stage: str | None = None  # the last stage this module reported
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
            said = STAGE_STARTING if launched else STAGE_WAITING
            if offset == 0 and stage != said and JobStatus(status) not in TERMINAL:
                stage = said  # the process has not spoken yet: say what it waits for
                last_yield = now
                yield {"stage": said}
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


# ------------------------------------------------------------------------------------------- the request

MAX_TURNS = 200  # earlier turns a try may carry (each one a user prompt or an answer)
MAX_SEED = 2**32 - 1
TRY_FIELDS = frozenset({"prompt", "history", "max_new_tokens", "temperature", "top_p", "seed", "raw"})


class TryInputError(ValueError):
    """A try's parameters are not acceptable; the message says which and what is allowed (a 422)."""


def _number(values: Mapping[str, Any], name: str, default: float, kind: type) -> Any:
    value = values.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise TryInputError(f"{name} must be a number, not {value!r}")
    try:
        number = kind(value) if not isinstance(value, str) else kind(value.strip())
    except (TypeError, ValueError):
        raise TryInputError(
            f"{name} must be {'a whole number' if kind is int else 'a number'}, not {str(value)[:40]!r}"
        ) from None
    if kind is int and isinstance(value, float) and value != number:
        raise TryInputError(f"{name} must be a whole number, not {value!r}")
    if kind is float and not math.isfinite(number):
        raise TryInputError(f"{name} must be a finite number, not {value!r}")
    return number


def _history(value: Any) -> list[dict[str, str]]:
    """The earlier turns: a JSON list (or its text) of {role: user|assistant, content: str}, alternating."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise TryInputError(f"history is not valid JSON ({exc}); send a JSON list of turns") from None
    if not isinstance(value, list):
        raise TryInputError("history must be a JSON list of {role: user|assistant, content: str} turns")
    if len(value) > MAX_TURNS:
        raise TryInputError(f"history has {len(value)} turns; at most {MAX_TURNS} are allowed")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or set(turn) - {"role", "content"}:
            raise TryInputError(f"history turn {i} must be an object with only role and content")
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant"):
            raise TryInputError(f"history turn {i} has role {str(role)[:20]!r}; use user or assistant")
        if not isinstance(content, str):
            raise TryInputError(f"history turn {i}'s content must be a string")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise TryInputError(
                f"history turn {i} is {role!r} where {expected!r} was expected: turns alternate, starting "
                "with user and ending with the assistant's answer (the new prompt is the next user turn)"
            )
        turns.append({"role": role, "content": content})
    if turns and turns[-1]["role"] != "assistant":
        raise TryInputError(
            "history must end with the assistant's answer; the new prompt is the next user turn"
        )
    return turns


def parse_try_request(
    values: Mapping[str, Any], *, max_prompt_chars: int, max_new_tokens_cap: int
) -> tuple[str, list[dict[str, str]], Decoding]:
    """(prompt, history, decoding) from query parameters or a JSON body; TryInputError when unacceptable.

    The prompt and the history's contents together count against `max_prompt_chars`. A sampled try without
    a seed gets a random one (sent back to the client, so the answer can be reproduced).
    """
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise TryInputError("prompt is required: the text to ask the model")
    history = _history(values.get("history"))
    chars = len(prompt) + sum(len(turn["content"]) for turn in history)
    if chars > max_prompt_chars:
        where = "the prompt has" if not history else "the prompt and the conversation so far have"
        raise TryInputError(
            f"{where} {chars} characters; at most {max_prompt_chars} are allowed "
            "(TUNEBOARD_TRY_MAX_PROMPT_CHARS)" + ("; start a new conversation" if history else "")
        )
    max_new_tokens = _number(values, "max_new_tokens", 64, int)
    if not 1 <= max_new_tokens <= max_new_tokens_cap:
        raise TryInputError(
            f"max_new_tokens is {max_new_tokens}; it must be between 1 and {max_new_tokens_cap} "
            "(TUNEBOARD_TRY_MAX_NEW_TOKENS)"
        )
    temperature = _number(values, "temperature", 0.0, float)
    if not 0 <= temperature <= 2:
        raise TryInputError(f"temperature is {temperature:g}; it must be between 0 (greedy) and 2")
    top_p = _number(values, "top_p", 1.0, float)
    if not 0 < top_p <= 1:
        raise TryInputError(f"top_p is {top_p:g}; it must be above 0 and at most 1")
    seed = values.get("seed")
    if seed is None or seed == "":
        seed = secrets.randbelow(2**31) if temperature > 0 else 0
    else:
        seed = _number(values, "seed", 0, int)
    if not 0 <= seed <= MAX_SEED:
        raise TryInputError(f"seed is {seed}; it must be a whole number from 0 to {MAX_SEED}")
    raw = values.get("raw")
    if raw is None or raw == "":
        raw = False
    if isinstance(raw, str):
        raw = raw.strip().lower() in ("true", "1", "on", "yes")
    if not isinstance(raw, bool):
        raise TryInputError("raw must be true or false")
    decoding = Decoding(max_new_tokens, temperature, top_p, seed, raw)
    return prompt, history, decoding
