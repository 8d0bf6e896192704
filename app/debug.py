"""A runtime snapshot for the fault and soak tests: asyncio tasks, threads, pooled DB connections, memory.

Off unless TUNEBOARD_DEBUG_ENDPOINTS=true (then 404, as if it did not exist): it reveals nothing secret,
but it is an internal tool, not part of the API.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import anyio
import anyio.to_thread
import psutil
from fastapi import APIRouter, HTTPException, Request

router = APIRouter(prefix="/api/_debug", include_in_schema=False)


def pool_status(engine: Any) -> dict[str, Any]:
    """Connections the engine's pool has handed out and not yet got back (a leak keeps this above 0)."""
    pool = engine.pool
    checked_out = pool.checkedout() if hasattr(pool, "checkedout") else None
    return {"class": type(pool).__name__, "checked_out": checked_out, "status": pool.status()}


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", type(coro).__name__)


@router.get("/runtime")
async def runtime(request: Request) -> dict[str, Any]:
    """Counts that must return to their baseline once clients leave: tasks, threads, DB connections, RSS."""
    if not request.app.state.settings.debug_endpoints:
        raise HTTPException(404, "Not Found")
    proc = psutil.Process(os.getpid())
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if not t.done() and t is not current]
    limiter = anyio.to_thread.current_default_thread_limiter().statistics()
    return {
        "tasks": len(tasks),
        "task_names": sorted(f"{t.get_name()}:{_coro_name(t)}" for t in tasks),
        "threads": threading.active_count(),
        "db_pool": pool_status(request.app.state.engine),
        # threads of the request/stream pool in use, and tasks queued for one (saturated: streams stall)
        "thread_pool": {
            "borrowed": limiter.borrowed_tokens,
            "total": limiter.total_tokens,
            "waiting": limiter.tasks_waiting,
        },
        "rss_bytes": proc.memory_info().rss,
        "open_fds": proc.num_fds(),
        "connections": len(proc.net_connections(kind="tcp")),
    }
