"""The jobs list at 10,000 runs: server time of the page and of its search, filters, sorts and pages.

    .venv/bin/python -m bench.jobs_list [--runs 10000] [--repeats 7] [--database-url URL]

Builds a throwaway database (SQLite in a temp dir unless --database-url names an empty PostgreSQL
database), migrated to head, with `--runs` jobs whose configs are the full stored form (as the app writes
them), spread over 4 topics, 3 models, 4 methods, every status and 90 days, a third tagged. Each
request goes through the whole app in-process (routing, auth middleware, query, Jinja render); the time
measured is from the app receiving the request to its last body byte (server time, no network).

Baseline in the same run: a second database seeded alike, with the list indexes of migration 0009 dropped
(the unindexed query; on PostgreSQL a database named after --database-url's with `_unindexed` appended,
created here). The two take turns on every repeat, and the ratio unindexed / indexed is printed. Exit
status 1 when any request takes 300 ms or more (the issue's bar) with the indexes in place.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from app.db import make_engine
from app.jobs.status import JobStatus
from app.main import create_app
from app.migrate import upgrade
from app.models import Job, JobTag
from app.settings import Settings
from contract.config import config_to_dict, demo_config

BAR_MS = 300.0
LIST_INDEXES = (
    "ix_job_list_status",
    "ix_job_list_created",
    "ix_job_list_model",
    "ix_job_list_archived",
    "ix_job_list_method",
)
REQUESTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("default page (newest 100)", "/", {}),
    ("search 'capitals'", "/?q=capitals", {}),
    ("search as you type (partial)", "/?q=lr-3", {"X-Jobs-Partial": "1"}),
    ("status=failed", "/?status=failed", {}),
    ("tag=baseline", "/?tag=baseline", {}),
    ("model=…tiny-llama", "/?model=preset%3Atiny-llama", {}),
    ("method=dpo", "/?method=dpo", {}),
    ("created in one week", "/?from=2026-10-01&to=2026-10-07", {}),
    ("sort=loss", "/?sort=loss", {}),
    ("sort=name", "/?sort=name", {}),
    ("page 50 (offset 5000)", "/?offset=5000", {}),
    ("everything combined", "/?q=capitals+status:succeeded&tag=baseline&method=sft&sort=loss", {}),
    ("API: GET /api/jobs?limit=200", "/api/jobs?limit=200&tag=sweep", {}),
)


class ServerTimer:
    """ASGI wrapper: seconds from receiving each request to sending its last body chunk."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last: float = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.last = time.perf_counter() - start
            await send(message)

        await self.app(scope, receive, timed_send)


def seed(url: str, runs: int) -> None:
    """`runs` jobs and their tags, inserted in bulk."""
    rng = random.Random(22)
    base = config_to_dict(demo_config())
    models = ["preset:tiny-llama", "preset:tiny-gemma3n", "google/gemma-3n-E2B-it"]
    methods = ["sft", "sft", "dpo", "orpo", "kto"]
    statuses = [s.value for s in JobStatus]
    start = datetime(2026, 9, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for i in range(1, runs + 1):
        config = dict(base)
        method = rng.choice(methods)
        if method != "sft" or i % 2:  # half the sft runs were stored before configs carried a method
            config["method"] = method
        else:
            config.pop("method", None)
        created = start + timedelta(minutes=13 * i)
        topic = rng.choice(["capitals", "support chats", "code review", "summaries"])
        name = f"{topic} lr-{rng.randint(1, 9)} #{i}"
        rows.append(
            {
                "id": i,
                "name": name,
                "status": rng.choice(statuses),
                "config_text": "",
                "config": config,
                "model_name": rng.choice(models),
                "created_at": created,
                "updated_at": created,
                "last_step": rng.randint(0, 500),
                "total_steps": 500,
                "last_loss": rng.random() * 3 if rng.random() < 0.8 else None,
                "notes": "",
                "archived_at": created if rng.random() < 0.05 else None,
            }
        )
        if i % 3 == 0:
            tags += [{"job_id": i, "tag": rng.choice(["baseline", "sweep", "ablation", "v2"])}]
            tags += [{"job_id": i, "tag": f"batch-{i % 50}"}]
    engine = make_engine(url)
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 1000):
            conn.execute(insert(Job), rows[chunk : chunk + 1000])
        conn.execute(insert(JobTag), tags)
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('job_id_seq', :n)"), {"n": runs})
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    engine.dispose()


def measure(variants: dict[str, Settings], repeats: int) -> dict[str, dict[str, float]]:
    """Median server milliseconds per variant and request; the variants take turns on every repeat, so a
    change in the machine's load falls on both alike."""
    timers = {name: ServerTimer(create_app(settings)) for name, settings in variants.items()}
    results: dict[str, dict[str, float]] = {name: {} for name in variants}
    with ExitStack() as stack:
        clients = {
            name: stack.enter_context(TestClient(timer, base_url="http://127.0.0.1"))  # type: ignore[arg-type]
            for name, timer in timers.items()
        }
        for label, path, headers in REQUESTS:
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats + 1):  # the first is a warm-up
                for name, client in clients.items():
                    r = client.get(path, headers=headers)
                    if r.status_code != 200:
                        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
                    times[name].append(timers[name].last * 1000)
            for name in variants:
                results[name][label] = statistics.median(times[name][1:])
    return results


def baseline_url(url: str, *, create: bool = True) -> str:
    """A second, empty PostgreSQL database beside `url`'s for the unindexed copy (created here; with
    create=False only dropped)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"{make_url(url).database}_unindexed"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if create:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_list_indexes(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for name in LIST_INDEXES:
            conn.execute(text(f"DROP INDEX {name}"))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-list-") as tmp:
        variants: dict[str, Settings] = {}
        for name in ("indexed", "unindexed"):
            url: str | None = None
            if args.database_url is not None:
                url = args.database_url if name == "indexed" else baseline_url(args.database_url)
            settings = Settings(data_dir=Path(tmp) / name, database_url=url, scheduler_enabled=False)
            upgrade(settings.sqlalchemy_url)
            began = time.perf_counter()
            seed(settings.sqlalchemy_url, args.runs)
            dialect = make_engine(settings.sqlalchemy_url).dialect.name
            print(f"{name}: seeded {args.runs} runs in {time.perf_counter() - began:.1f} s ({dialect})")
            if name == "unindexed":
                drop_list_indexes(settings.sqlalchemy_url)
            variants[name] = settings
        try:
            measured = measure(variants, args.repeats)
        finally:
            if args.database_url is not None:
                baseline_url(args.database_url, create=False)  # dropped again
    indexed, unindexed = measured["indexed"], measured["unindexed"]
    width = max(len(label) for label, _p, _h in REQUESTS)
    head = f"{'request':<{width}}  {'indexed ms':>10}  {'unindexed ms':>12}  {'ratio':>6}"
    print(f"\n{head}  under {BAR_MS:.0f} ms")
    worst = 0.0
    for label, _path, _headers in REQUESTS:
        ms, base = indexed[label], unindexed[label]
        worst = max(worst, ms)
        verdict = "yes" if ms < BAR_MS else "NO"
        print(f"{label:<{width}}  {ms:>10.1f}  {base:>12.1f}  {base / ms:>5.2f}×  {verdict}")
    print(f"\nslowest indexed request: {worst:.1f} ms (bar: {BAR_MS:.0f} ms server time at {args.runs} runs)")
    return 0 if worst < BAR_MS else 1


if __name__ == "__main__":
    sys.exit(main())
