"""Dataset intake at scale: a CSV with 100,000 columns, a ~100 MB JSONL and a 1,000,000-row Parquet file
are checked (read, layout detected, every row converted and checked) within stated budgets, and the app
stays responsive while one is uploaded.

    .venv/bin/python -m bench.dataset_intake [--jsonl-mb 100] [--parquet-rows 1000000] [--skip-app]

Files are generated in a temp dir (removed afterwards), never in the repository. Each check runs in a fresh
child process, so its wall time and peak memory (VmHWM) are its own. Baseline in the same child: only
reading the same file with the standard tools (json.loads per line; pyarrow's read + to_pylist; csv's
header), printed as a ratio: the price of checking every row on top of parsing it. Both run with the
cyclic garbage collector off, as the app's upload checks do.

App responsiveness: the real app served by uvicorn (loopback) receives the JSONL upload while a client
polls GET /api/health every 50 ms; the health latencies during the upload are compared with those of the
idle app measured just before, and with those of the same upload checked with Python's cyclic garbage
collector on (the baseline: how the app checked uploads before no_cyclic_gc). Exit status 1 when a budget
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# budgets: (seconds, peak MB of the checking process)
BUDGETS = {
    "wide.csv": (2.0, 300.0),
    "big.jsonl": (90.0, 2500.0),
    "rows.parquet": (90.0, 3500.0),
}
HEALTH_P95_BUDGET_MS = 250.0
WIDE_COLUMNS = 100_000


def _chat_row(rng: random.Random, i: int) -> dict[str, Any]:
    words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "omega")) for _ in range(30))
    if i % 10 == 0:
        return {
            "messages": [
                {"role": "user", "content": f"Weather in city {i}? {words}"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps({"c": i})},
                        }
                    ],
                },
                {"role": "tool", "content": json.dumps({"temp": i % 30})},
                {"role": "assistant", "content": f"It is {i % 30} degrees."},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        }
    return {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Question {i}: {words}"},
            {"role": "assistant", "content": f"Answer {i}: {words[::-1]}"},
        ]
    }


def generate(root: Path, jsonl_mb: int, parquet_rows: int) -> dict[str, Path]:
    """The three files, written the way users' tools write them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    wide = root / "wide.csv"
    with wide.open("w", encoding="utf-8") as fh:
        fh.write(",".join(["text"] + [f"c{i}" for i in range(WIDE_COLUMNS)]) + "\n")
        for _ in range(10):
            fh.write(",".join(["hello"] + ["x"] * WIDE_COLUMNS) + "\n")
    big = root / "big.jsonl"
    with big.open("w", encoding="utf-8") as fh:
        i = 0
        while fh.tell() < jsonl_mb * 1_000_000:
            fh.write(json.dumps(_chat_row(rng, i)) + "\n")
            i += 1
    rows = root / "rows.parquet"
    # messages as nested structs, as `datasets` writes them, in batches (the generator stays small)
    schema = None
    writer = None
    batch = 100_000
    for start in range(0, parquet_rows, batch):
        chunk = [
            {
                "messages": [
                    {"role": "user", "content": f"Reverse: w{i}"},
                    {"role": "assistant", "content": f"{i}w"},
                ],
                "source": "bench",
            }
            for i in range(start, min(parquet_rows, start + batch))
        ]
        table = pa.Table.from_pylist(chunk, schema=schema)
        schema = table.schema
        if writer is None:
            writer = pq.ParquetWriter(rows, schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return {"wide.csv": wide, "big.jsonl": big, "rows.parquet": rows}


_CHILD = r"""
import gc, json, resource, sys, time
from pathlib import Path
path, mode = Path(sys.argv[1]), sys.argv[2]
gc.disable()  # as the app checks uploads (app/datasets/intake.py no_cyclic_gc); the baseline too
started = time.perf_counter()
result = {}
if mode == "baseline":
    if path.suffix == ".jsonl":
        with path.open("rb") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        result["rows"] = len(rows)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq
        rows = pq.read_table(path).to_pylist()
        result["rows"] = len(rows)
    else:
        import csv
        with path.open(newline="", encoding="utf-8") as fh:
            result["columns"] = len(next(csv.reader(fh)))
else:
    from contract.datasets import DatasetError, check_file
    try:
        checked = check_file(path)
        result["rows"] = checked.intake["rows"]
        result["layout"] = checked.intake["layout"]
    except DatasetError as exc:
        result["refused"] = str(exc)[:160]
result["seconds"] = time.perf_counter() - started
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's size across exec)
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
rss_kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result["peak_mb"] = rss_kb / 1024
print(json.dumps(result))
"""


def measure(path: Path, mode: str) -> dict[str, Any]:
    """Run one check (or the baseline read) of `path` in a fresh child process."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def app_responsiveness(upload: Path, *, collector_off: bool = True) -> dict[str, Any]:
    """Health latencies (ms) of the idle app, then during the upload and check of `upload`.

    collector_off=False runs the check with the cyclic garbage collector on (as before
    app.datasets.intake.no_cyclic_gc): the baseline of the app's latency."""
    import contextlib

    import httpx
    import uvicorn

    from app.datasets import intake
    from app.main import create_app
    from app.settings import Settings

    intake_gc = intake.no_cyclic_gc
    if not collector_off:
        intake.no_cyclic_gc = contextlib.nullcontext  # type: ignore[assignment]

    data = Path(tempfile.mkdtemp(prefix="bench-intake-app-"))
    settings = Settings(
        data_dir=data,
        scheduler_enabled=False,
        max_upload_bytes=upload.stat().st_size + 1024,
        dataset_check_queue_s=600,
        allowed_hosts=["127.0.0.1"],
    )
    app = create_app(settings)
    with tempfile.TemporaryDirectory():
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:

                def poll(until: threading.Event, seconds: float | None = None) -> list[float]:
                    latencies = []
                    end = time.monotonic() + seconds if seconds else None
                    while not until.is_set() and (end is None or time.monotonic() < end):
                        t = time.perf_counter()
                        client.get("/api/health").raise_for_status()
                        latencies.append((time.perf_counter() - t) * 1000)
                        time.sleep(0.05)
                    return latencies

                idle = poll(threading.Event(), 3.0)
                done = threading.Event()
                answer: dict[str, Any] = {}

                def send() -> None:
                    with httpx.Client(base_url=url, timeout=600) as uploader, upload.open("rb") as fh:
                        started = time.perf_counter()
                        r = uploader.post("/api/datasets", files={"file": (upload.name, fh)})
                        answer.update(status=r.status_code, seconds=time.perf_counter() - started)
                        answer["rows"] = r.json().get("rows")
                    done.set()

                sender = threading.Thread(target=send)
                sender.start()
                busy = poll(done)
                sender.join()
        finally:
            server.should_exit = True
            thread.join(timeout=15)
    intake.no_cyclic_gc = intake_gc  # type: ignore[method-assign]
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    return {
        "idle_p50": statistics.median(idle),
        "idle_p95": _percentile(idle, 0.95),
        "busy_p50": statistics.median(busy),
        "busy_p95": _percentile(busy, 0.95),
        "busy_max": max(busy),
        "polls": len(busy),
        **answer,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset_intake", description=__doc__)
    parser.add_argument("--jsonl-mb", type=int, default=100)
    parser.add_argument("--parquet-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-app", action="store_true", help="Only the checks, not the app's latency.")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        t = time.perf_counter()
        files = generate(Path(tmp), args.jsonl_mb, args.parquet_rows)
        print(f"generated in {time.perf_counter() - t:.1f} s: " + ", ".join(
            f"{n} {p.stat().st_size / 1e6:.1f} MB" for n, p in files.items()))  # fmt: skip
        print(f"{'file':<14} {'check s':>8} {'peak MB':>8} {'read s':>7} {'read MB':>8} {'ratio':>6}  result")
        for name, path in files.items():
            base = measure(path, "baseline")
            got = measure(path, "check")
            limit_s, limit_mb = BUDGETS[name]
            within = got["seconds"] <= limit_s and got["peak_mb"] <= limit_mb
            ok &= within
            what = got.get("refused") or f"{got['rows']} rows, layout {got['layout']}"
            print(
                f"{name:<14} {got['seconds']:>8.2f} {got['peak_mb']:>8.0f} {base['seconds']:>7.2f} "
                f"{base['peak_mb']:>8.0f} {got['seconds'] / max(base['seconds'], 1e-9):>5.1f}x  {what} "
                f"[budget {limit_s:g} s, {limit_mb:g} MB: {'ok' if within else 'MISSED'}]"
            )
        if not args.skip_app:
            base = app_responsiveness(files["big.jsonl"], collector_off=False)
            app = app_responsiveness(files["big.jsonl"])
            within = app["busy_p95"] <= HEALTH_P95_BUDGET_MS and app.get("status") == 201
            ok &= within
            for label, got in (("collector on (baseline)", base), ("collector off (the app)", app)):
                print(
                    f"app, {label}: upload of big.jsonl answered {got.get('status')} in "
                    f"{got.get('seconds', 0):.1f} s ({got.get('rows')} rows); /api/health idle p50 "
                    f"{got['idle_p50']:.1f} ms p95 {got['idle_p95']:.1f} ms; during the upload p50 "
                    f"{got['busy_p50']:.1f} ms p95 {got['busy_p95']:.1f} ms max {got['busy_max']:.1f} ms "
                    f"over {got['polls']} polls"
                )
            ratios = {k: base[k] / max(app[k], 1e-9) for k in ("seconds", "busy_p95", "busy_max")}
            print(
                f"app ratios (baseline / app): upload time {ratios['seconds']:.1f}x, health p95 "
                f"{ratios['busy_p95']:.1f}x, health max {ratios['busy_max']:.1f}x; budget p95 "
                f"{HEALTH_P95_BUDGET_MS:g} ms: {'ok' if within else 'MISSED'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
