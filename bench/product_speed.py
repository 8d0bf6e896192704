"""The speed users get: a job through a running `tuneboard serve`, beside `bench.speed`'s loop, in one call.

    python -m bench.product_speed --model e2b --seq 512 --batch 16 --steps 50 \\
        --loop-recipes seed,tb-compile --loop-phases 4x4:50 --loop-tb-phases 16x1:50 \\
        --work bench-work --out bench-work/product

1. Runs `bench.speed` (the plain-loop recipes, each in its own process) on the saved random-weight model,
   unless `--loop-recipes` is empty.
2. Starts `python -m tuneboard.cli serve` on a free loopback port with a fresh data dir (no login: the
   README's local use, 127.0.0.1 only), writes a text dataset of the fall gate's rule rows
   (`bench.fall_gate.rule_text`: each row tokenizes to exactly `--seq` tokens with the bench models' tiny
   tokenizer), submits the job over the API (`POST /api/jobs`: the real launcher, worker, HF Trainer,
   reporter, evaluation, checkpoints, guard and run plan), and waits for it to end.
3. Reads what the dashboard reports: the job's `tokens_per_second` and `peak_vram_gb` (`GET /api/jobs/{id}`,
   the numbers on its page) and every metric point (`GET /api/jobs/{id}/metrics.json`), and prints them
   beside the loop's recipes with ratios: × seed and × the loop recipe named by `--loop-ref`.

Tokens/s of the product is the median of the reported per-step values after the first `--warmup` steps
(the loop's rule: steps 4..N); the dashboard's own figure is its last reported window, shown too. Peak
memory is the largest `vram_peak_gb` reported (the training's own peak: the worker restarts the counter
after loading). MFU is printed both ways (6N and frozen base: bench/fall_gate.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fall_gate import flops_per_token_both, rule_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rule_dataset(path: Path, rows: int, seq: int, seed: int = 0) -> None:
    """JSONL text rows of the fall gate's rule, `seq - 1` characters each (+ the BOS = `seq` tokens)."""
    with path.open("w", encoding="utf-8") as fh:
        for text in rule_text(rows, seq - 1, seed):
            fh.write(json.dumps({"text": text}) + "\n")


def job_config(
    model_dir: Path,
    data: Path,
    *,
    steps: int,
    batch: int,
    grad_accum: int,
    seq: int,
    lr: float,
    eval_steps: int,
    save_steps: int,
    compile_setting: str,
) -> dict[str, Any]:
    """The job: LoRA r16 alpha 32 on the rule rows, eval and checkpoints on, as a user would submit it."""
    return {
        "name": f"product speed {model_dir.name} {batch}x{grad_accum}x{seq}",
        "model": {"name": str(model_dir)},
        "dataset": {
            "source": str(data),
            "format": "text",
            "eval_fraction": 0.05,
            "assistant_only_loss": False,
        },
        "quantization": {"method": "nf4", "double_quant": True},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "grad_accum": grad_accum,
            "torch_compile": compile_setting,
            "max_seq_len": seq,
            "learning_rate": lr,
            "eval_steps": eval_steps,
            "save_steps": save_steps,
            "logging_steps": 1,
            "seed": 0,
            "gradient_checkpointing": True,
        },
        "resources": {"gpus": 1 if _cuda() else 0},
    }


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def series(metrics: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """(step, value) points of one metric from `metrics.json`, finite values only."""
    out = []
    for step, value in metrics.get("series", {}).get(key, []):
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append((int(step), float(value)))
    return out


def product_numbers(job: dict[str, Any], metrics: dict[str, Any], warmup: int) -> dict[str, Any]:
    """What the dashboard reports for the job, and the per-step median the loop's numbers compare with."""
    tps = [v for s, v in series(metrics, "tokens_per_second") if s > warmup]
    peaks = [v for _, v in series(metrics, "vram_peak_gb")]
    reserved = [v for _, v in series(metrics, "vram_reserved_gb")]
    loss = series(metrics, "loss")
    eval_loss = series(metrics, "eval_loss")
    return {
        "status": job.get("status"),
        "failure_reason": job.get("failure_reason"),
        "dashboard_tokens_per_second": job.get("tokens_per_second"),
        "dashboard_peak_vram_gb": job.get("peak_vram_gb"),
        "tokens_per_s": statistics.median(tps) if tps else None,
        "steps_measured": len(tps),
        "peak_allocated_gb": max(peaks) if peaks else None,
        "reserved_gb_max": max(reserved) if reserved else None,
        "loss_first_last": (loss[0], loss[-1]) if loss else None,
        "eval_loss": eval_loss,
        "last_step": job.get("last_step"),
    }


class Server:
    """`tuneboard serve` as its own process on a free loopback port with a fresh data dir."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "tuneboard.cli", "serve", "--port", str(self.port)]
        argv += ["--data-dir", str(data_dir)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env or dict(os.environ), stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuneboard serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"tuneboard serve did not answer /api/health within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_job(
    server_url: str, config: dict[str, Any], timeout: float, poll_s: float = 2.0
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Submit `config`, wait for the job to end; (job, metrics.json, seconds from submit to end)."""
    import httpx

    with httpx.Client(base_url=server_url, timeout=30) as client:
        created = client.post("/api/jobs", json=config)
        if created.status_code != 201:
            raise RuntimeError(f"POST /api/jobs answered {created.status_code}: {created.text[:2000]}")
        job_id = created.json()["id"]
        print(f"job {job_id} submitted to {server_url}", flush=True)
        start = time.monotonic()
        last_status = None
        job: dict[str, Any] = {}
        while time.monotonic() - start < timeout:
            job = client.get(f"/api/jobs/{job_id}").json()
            if job.get("status") != last_status:
                last_status = job.get("status")
                print(f"job {job_id}: {last_status} after {time.monotonic() - start:.0f} s", flush=True)
            if last_status in TERMINAL:
                break
            time.sleep(poll_s)
        else:
            client.post(f"/api/jobs/{job_id}/cancel")
            raise RuntimeError(f"job {job_id} still {last_status} after {timeout:.0f} s: cancelled")
        wall = time.monotonic() - start
        metrics = client.get(f"/api/jobs/{job_id}/metrics.json").json()
        return job, metrics, wall


def run_loop(args: argparse.Namespace, model_dir: Path, loop_out: Path) -> dict[str, Any]:
    """`bench.speed` with the loop recipes on the same model; its summary and per-recipe results."""
    cmd = [sys.executable, "-m", "bench.speed", "--model", str(model_dir), "--seq", str(args.seq)]
    cmd += ["--recipes", args.loop_recipes, "--phases", args.loop_phases, "--tb-phases", args.loop_tb_phases]
    cmd += ["--data", "rule", "--lr", str(args.lr), "--eval-every", str(args.loop_eval_every)]
    cmd += ["--work", str(args.work), "--out", str(loop_out), "--timeout", str(args.loop_timeout)]
    cmd += args.loop_extra
    print("loop: " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=False, cwd=REPO)
    return read_loop(loop_out, model_dir, args.seq)


def read_loop(loop_out: Path, model_dir: Path, seq: int) -> dict[str, Any]:
    """The summary and per-recipe results `bench.speed` wrote under `loop_out`."""
    name = model_dir.name
    summary_path = loop_out / f"speed-{name}-{seq}-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    recipes = {}
    for path in sorted(loop_out.glob(f"speed-{name}-{seq}-*.json")):
        if path != summary_path:
            data = json.loads(path.read_text())
            recipes[data["recipe"]] = data
    return {"summary": summary, "recipes": recipes}


def comparison(
    loop: dict[str, Any], product: dict[str, Any], tokens_per_step: int, loop_ref: str, peak: float
) -> list[str]:
    """Markdown rows: every loop recipe's phase of `tokens_per_step`, then the product job, with ratios."""
    summary = loop.get("summary", {})
    six_n = summary.get("flops_per_token")
    frozen = summary.get("flops_per_token_frozen_base")

    def phase_of(recipe: str) -> dict[str, Any] | None:
        r = loop.get("recipes", {}).get(recipe)
        if not r:
            return None
        return next((p for p in r["phases"] if p["tokens_per_step"] == tokens_per_step), None)

    seed, ref = phase_of("seed"), phase_of(loop_ref)

    def ratio(value: float | None, base: dict[str, Any] | None, key: str) -> str:
        if value and base and base.get(key):
            return f"{value / base[key]:.2f}"
        return "-"

    def mfu(tps: float | None, fpt: float | None) -> str:
        if tps and fpt and math.isfinite(peak):
            return f"{100 * tps * fpt / peak:.1f}%"
        return "-"

    lines = [
        f"| path | shape | tokens/s | × seed | × {loop_ref} | peak alloc GB | × seed | MFU 6N "
        "| MFU frozen base |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, str, float | None, float | None]] = []
    for recipe in loop.get("recipes", {}):
        p = phase_of(recipe)
        if p:
            rows.append(
                (f"loop: {recipe}", f"{p['micro']} × {p['accum']}", p["tokens_per_s"], p["peak_allocated_gb"])
            )
    rows.append(
        (
            "product: tuneboard serve job",
            product.get("shape", "-"),
            product.get("tokens_per_s"),
            product.get("peak_allocated_gb"),
        )
    )
    for name, shape, tps, gb in rows:
        cell = f"{tps:.0f}" if tps else "-"
        gb_cell = f"{gb:.2f}" if gb else "-"
        lines.append(
            f"| {name} | {shape} | {cell} | {ratio(tps, seed, 'tokens_per_s')} | "
            f"{ratio(tps, ref, 'tokens_per_s')} | {gb_cell} | {ratio(gb, seed, 'peak_allocated_gb')} | "
            f"{mfu(tps, six_n)} | {mfu(tps, frozen)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e2b", help="e2b | e4b | llama1b, or a saved model directory")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--save-steps", type=int, default=25)
    parser.add_argument(
        "--compile", default="on", choices=["auto", "on", "off"], help="training.torch_compile"
    )
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the product's median")
    parser.add_argument("--loop-recipes", default="seed,tb-compile", help="bench.speed recipes ('': none)")
    parser.add_argument("--loop-phases", default="4x4:50")
    parser.add_argument("--loop-tb-phases", default="16x1:50")
    parser.add_argument("--loop-eval-every", type=int, default=10)
    parser.add_argument("--loop-timeout", type=int, default=600)
    parser.add_argument("--loop-ref", default="tb-compile", help="the loop recipe the product must match")
    parser.add_argument("--loop-extra", nargs="*", default=[], help="more bench.speed arguments")
    parser.add_argument("--job-timeout", type=float, default=900)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tb-product")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from bench.speed import peak_flops, save_model

    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work / "product"
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if Path(args.model).is_dir() else save_model(args.model, args.work)
    model_dir = model_dir.resolve()
    loop = (
        run_loop(args, model_dir, out / "loop")
        if args.loop_recipes
        else read_loop(out / "loop", model_dir, args.seq)
    )

    data_dir = args.work / "product-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    data = data_dir / "rule.jsonl"
    rows = args.batch * args.grad_accum * (args.steps + 4)
    write_rule_dataset(data, int(rows / 0.95) + 2, args.seq)
    config = job_config(
        model_dir,
        data.resolve(),
        steps=args.steps,
        batch=args.batch,
        grad_accum=args.grad_accum,
        seq=args.seq,
        lr=args.lr,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        compile_setting=args.compile,
    )
    (out / "job-config.json").write_text(json.dumps(config, indent=1))
    server = Server(data_dir.resolve(), out / "serve.log")
    try:
        server.wait_ready()
        job, metrics, wall = run_job(server.url, config, args.job_timeout)
    finally:
        server.stop()
    for log in sorted(data_dir.glob("runs/*/*.log")):  # the worker's own log, for the record
        shutil.copy(log, out / f"worker-{log.parent.name}-{log.name}")
    product = product_numbers(job, metrics, args.warmup)
    product["shape"] = f"{args.batch} × {args.grad_accum}"
    product["wall_s"] = wall
    (out / "product.json").write_text(
        json.dumps({"job": job, "metrics": metrics, "numbers": product}, indent=1)
    )

    peak, gpu = peak_flops()
    tokens_per_step = args.batch * args.grad_accum * args.seq
    lines = [
        f"GPU {gpu}; model {model_dir.name}; seq {args.seq}; {tokens_per_step} tokens per optimizer step",
        f"product job: {product['status']} in {wall:.0f} s (submit to end), "
        f"{product['steps_measured']} steps in the median; dashboard shows "
        f"{product['dashboard_tokens_per_second']} tokens/s (last window) and "
        f"{product['dashboard_peak_vram_gb']} GB peak; loss {product['loss_first_last']}; "
        f"eval loss {product['eval_loss']}"
        + (f"; failure: {product['failure_reason']}" if product.get("failure_reason") else ""),
        *comparison(loop, product, tokens_per_step, args.loop_ref, peak),
    ]
    summary = loop.get("summary", {})
    lines += [line for line in summary.get("table", []) if line.startswith(("loss gate", "fall gate"))]
    if summary.get("linear_params"):
        both = flops_per_token_both(
            summary["linear_params"], summary.get("lora_params", 0.0), summary["attention_flops_per_token"]
        )
        lines.append(
            f"FLOPs/token: 6N {both['six_n'] / 1e9:.2f} G, frozen base {both['frozen_base'] / 1e9:.2f} G"
        )
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
