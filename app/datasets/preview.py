"""Dataset previews through a model's tokenizer, computed by a short subprocess and cached on disk.

The tokenizer needs transformers, which the web process never imports: the app runs
`python -m worker.datasets.inspect ...` (argv list, no shell, the worker's secret-free environment),
waits at most settings.dataset_preview_timeout_s, and keeps the JSON answer per (dataset, model,
max_seq_len) next to the dataset, so the next look is instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.scheduler.local import child_env
from app.settings import Settings
from contract.catalog import PRESET_PREFIX
from contract.config import ModelConfig, demo_config

CACHE_VERSION = 4  # bump when the inspect output changes shape (3: layouts, tools; 4: preference pairs)
PRESET_CACHE_DIR = "presets"  # under DATA_DIR/datasets; never a dataset id (those are hex)
MAX_SEQ_LEN_LIMIT = 1_048_576
STDERR_TAIL = 2000
MAX_CONCURRENT_PREVIEWS = 2


class PreviewError(Exception):
    """The preview could not be made; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


@dataclass(frozen=True)
class PreviewRequest:
    """What to preview: the dataset (a data file or preset:<name>) with which model and length."""

    source: str  # a path to data.jsonl, or preset:<name>
    cache_dir: Path
    model: str
    max_seq_len: int


def default_model() -> str:
    """The demo preset's model, the default for previews."""
    return demo_config().model.name


def default_max_seq_len() -> int:
    """The demo preset's training.max_seq_len."""
    return demo_config().training.max_seq_len


def check_params(model: str, max_seq_len: int) -> None:
    """Refuse (422) a model name the config would refuse, or a length out of range."""
    if model.startswith("-"):
        raise PreviewError(422, f"model {model!r} is not a model name; use preset:<name> or a hub id")
    try:
        ModelConfig(name=model)
    except ValidationError as exc:
        raise PreviewError(422, f"model: {exc.errors()[0]['msg']}") from None
    if not 1 <= max_seq_len <= MAX_SEQ_LEN_LIMIT:
        raise PreviewError(422, f"max_seq_len must be between 1 and {MAX_SEQ_LEN_LIMIT} (got {max_seq_len})")


def preset_cache_dir(settings: Settings, source: str) -> Path:
    """Where previews of a preset dataset are cached."""
    return settings.datasets_dir / PRESET_CACHE_DIR / source.removeprefix(PRESET_PREFIX)


def cache_file(req: PreviewRequest) -> Path:
    """The cache file of one (dataset, model, max_seq_len)."""
    key = json.dumps([CACHE_VERSION, req.model, req.max_seq_len])
    return req.cache_dir / "previews" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def command(settings: Settings, req: PreviewRequest) -> list[str]:
    """The argv of the inspection subprocess (no shell anywhere)."""
    python = settings.worker_python or sys.executable
    return [
        python,
        "-m",
        "worker.datasets.inspect",
        "--dataset",
        req.source,
        "--model",
        req.model,
        "--max-seq-len",
        str(req.max_seq_len),
    ]


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group goes
    except (ProcessLookupError, PermissionError):
        pass


async def run_inspect(settings: Settings, req: PreviewRequest) -> dict[str, Any]:
    """Run the inspection subprocess and return its JSON answer (PreviewError when it fails)."""
    argv = command(settings, req)
    env = child_env(os.environ)
    env["TUNEBOARD_DATASETS_DIR"] = str(settings.datasets_dir)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise PreviewError(
            500, f"could not start the preview ({exc.strerror or exc}); check TUNEBOARD_WORKER_PYTHON"
        ) from None
    timeout = settings.dataset_preview_timeout_s
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        raise PreviewError(
            504,
            f"the preview took longer than {timeout:g} s and was stopped; try a smaller dataset or raise "
            "TUNEBOARD_DATASET_PREVIEW_TIMEOUT_S",
        ) from None
    except BaseException:  # the request was cancelled (client gone): leave no process behind
        _kill(proc)
        raise
    answer = _last_json_line(stdout)
    if proc.returncode == 0 and answer is not None and "error" not in answer:
        return answer
    if answer is not None and "error" in answer:
        raise PreviewError(422, str(answer["error"]), list(answer.get("problems") or []))
    tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL:].strip()
    raise PreviewError(
        500, f"the preview process failed (exit status {proc.returncode}): {tail or 'no output'}"
    )


def _last_json_line(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def limiter(state: Any) -> asyncio.Semaphore:
    """The app's limit on previews computed at once (each subprocess loads transformers: ~0.5 GB)."""
    semaphore: asyncio.Semaphore | None = getattr(state, "preview_limiter", None)
    if semaphore is None:
        semaphore = asyncio.Semaphore(MAX_CONCURRENT_PREVIEWS)
        state.preview_limiter = semaphore
    return semaphore


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        cached: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cached["cached"] = True
    return cached


async def preview(
    settings: Settings, req: PreviewRequest, limit: asyncio.Semaphore | None = None
) -> dict[str, Any]:
    """The cached preview of `req`, computing (at most `limit` at once) and caching it when there is none."""
    path = cache_file(req)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    async with limit or contextlib.nullcontext():
        cached = _read_cache(path)  # computed by another request while this one waited
        if cached is not None:
            return cached
        answer = await run_inspect(settings, req)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".preview-", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(answer, fh, ensure_ascii=False)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    answer["cached"] = False
    return answer
