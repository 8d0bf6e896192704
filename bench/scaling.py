"""Data-parallel scaling through Tuneboard's own launcher: the real app, its scheduler and `worker.train`.

    python -m bench.scaling --gpus 1 2 --size e2b --steps 30 --batch 8 --seq 512 --work bench-work/scaling

Starts `tuneboard serve` on a free loopback port with a fresh data dir, submits the same Gemma 3n job
(real dims, random weights, nf4) once per GPU count, waits for each, and prints tokens/s (median of the
steps after warm-up), peak VRAM per GPU and the loss curves side by side, then the scaling efficiency
tokens/s(N) / (N × tokens/s(1)). With `--force-torchrun` a one-GPU job also runs under torchrun
(a world-size-1 dry run of the multi-GPU path on a machine with one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def summarize(base: str, job_id: int) -> dict[str, Any]:
    """Status, tokens/s, peak VRAM and the loss curve of one finished job, read back through the API."""
    job = _get(f"{base}/api/jobs/{job_id}")
    series = _get(f"{base}/api/jobs/{job_id}/metrics?max_points=5000")["series"]
    tps = [v for s, v in series.get("tokens_per_second", []) if s > 3 and v is not None]
    peak = [v for _, v in series.get("vram_peak_gb", []) if v is not None]
    return {
        "status": job["status"],
        "reason": job.get("failure_reason"),
        "tokens_per_second": statistics.median(tps) if tps else None,
        "peak_vram_gb": max(peak) if peak else None,
        "loss": [(s, v) for s, v in series.get("loss", [])],
        "stderr_tail": (job.get("stderr_tail") or "")[-3000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", default="e2b", choices=["e2b", "e4b"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--force-torchrun", action="store_true")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from bench.gemma3n_dims import save_random_model
    from bench.real_size_run import text_job_config, write_text_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / f"gemma3n-{args.size}"
    if not (model_dir / "config.json").exists():
        save_random_model(args.size, model_dir)
    data = args.work / "long-text.jsonl"
    write_text_dataset(data, rows=args.batch * max(args.gpus) * (args.steps + 2), chars=args.seq + 64)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneboard.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(args.work / "data"),
        ],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    results: dict[int, dict[str, Any]] = {}
    try:
        deadline = time.time() + 60
        while True:
            try:
                health = _get(f"{base}/api/health")
                break
            except OSError:
                if time.time() > deadline or app.poll() is not None:
                    raise SystemExit("the app did not start") from None
                time.sleep(0.5)
        print("scheduler:", json.dumps(health.get("scheduler", {}).get("gpus")))
        for gpus in args.gpus:
            config = text_job_config(
                f"scaling {args.size} × {gpus} GPU",
                model_dir,
                data,
                steps=args.steps,
                batch=args.batch,
                seq=args.seq,
                gpus=gpus,
            )
            if args.force_torchrun:  # a config field, so the job's plan records it (env vars change no job)
                config["speed"] = {**config.get("speed", {}), "force_torchrun": "on"}
            job = _post(f"{base}/api/jobs", config)
            start = time.time()
            while True:
                status = _get(f"{base}/api/jobs/{job['id']}")["status"]
                if status in ("succeeded", "failed", "cancelled") or time.time() - start > args.timeout:
                    break
                time.sleep(2)
            results[gpus] = summarize(base, job["id"])
            r = results[gpus]
            print(
                f"\n== {gpus} GPU: {r['status']} in {time.time() - start:.0f} s; "
                f"tokens/s {r['tokens_per_second']}; "
                f"peak VRAM/GPU {r['peak_vram_gb']} GB {r['reason'] or ''}"
            )
            if r["status"] != "succeeded":
                print(r["stderr_tail"])
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=30)

    print("\n| GPUs | status | tokens/s | peak VRAM per GPU (GB) | first loss | last loss |")
    print("|---|---|---|---|---|---|")
    for gpus, r in results.items():
        first = r["loss"][0][1] if r["loss"] else None
        last = r["loss"][-1][1] if r["loss"] else None
        print(
            f"| {gpus} | {r['status']} | {r['tokens_per_second']} | {r['peak_vram_gb']} | {first} | {last} |"
        )
    one = results.get(1, {}).get("tokens_per_second")
    for gpus, r in results.items():
        if gpus > 1 and one and r["tokens_per_second"]:
            print(f"scaling efficiency at {gpus} GPUs: {r['tokens_per_second'] / (gpus * one):.2f}")
    if len(results) > 1:
        print("loss by step:", json.dumps({g: r["loss"][:60] for g, r in results.items()}))


if __name__ == "__main__":
    main()
