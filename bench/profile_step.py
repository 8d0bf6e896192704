"""Where one training step's time and memory go (used by `python -m bench.speed --profile`).

- `profile_time`: runs steps under torch.profiler and prints the step's wall time, how much of it the GPU was
  busy (sum of kernel times; the rest is the GPU waiting for the CPU), the number of kernel launches and the
  kernels that took the most time.
- `profile_memory`: records the CUDA allocator's history over one step, replays it to find the moment of peak
  allocation and prints what was live then: the memory held before the step (weights, optimizer state) and
  the step's own allocations grouped by the innermost source line of the libraries that made them.
"""

from __future__ import annotations

import gzip
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIBRARY_MARKERS = (
    "worker/",
    "bench/",
    "transformers/",
    "peft/",
    "bitsandbytes/",
    "liger_kernel/",
    "torch/utils",
)


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (the time anything ran)."""
    total = 0.0
    end = float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def profile_time(
    run_step: Callable[[], object], steps: int = 2, top: int = 15, trace_path: Path | None = None
) -> dict[str, Any]:
    """Profile `steps` calls of `run_step` (already warmed up); print and return the summary.

    GPU busy is the union of the device's activity intervals (kernels and copies on every stream), so
    copies that overlap kernels on a side stream do not count twice; the sum of kernel times is printed
    too. `trace_path` (ending in .json.gz) keeps the Chrome trace for a closer look
    (`python -m bench.trace_gaps TRACE` splits the compute stream's time into kernels and waits).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    if trace_path is not None:
        steps = 1  # one step's trace stays a few MB
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run_step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    kernels: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    busy_us = 0.0
    launches = 0
    intervals: list[tuple[float, float]] = []
    for evt in prof.events():
        # record_function ranges also appear on the GPU timeline; they are spans, not work
        if evt.device_type == torch.autograd.DeviceType.CUDA and not getattr(
            evt, "is_user_annotation", False
        ):
            dur = evt.device_time  # microseconds
            busy_us += dur
            launches += 1
            name = evt.name[:90]
            kernels[name] += dur
            counts[name] += 1
            intervals.append((evt.time_range.start, evt.time_range.end))
    summed = busy_us / 1e6 / steps
    busy = _union_us(intervals) / 1e6 / steps
    top_kernels = [
        {"name": n, "ms_per_step": us / 1e3 / steps, "calls_per_step": counts[n] / steps}
        for n, us in kernels.most_common(top)
    ]
    averages = prof.key_averages()
    host_ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    top_host = [
        {
            "name": e.key[:90],
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "calls": e.count / steps,
        }
        for e in host_ops
    ]
    ranges = {e.key: e.cpu_time_total / 1e3 / steps for e in averages if e.key.startswith("step:")}
    summary: dict[str, Any] = {
        "step_wall_s": wall,
        "gpu_busy_s": busy,
        "gpu_kernel_time_sum_s": summed,
        "gpu_busy_fraction": busy / wall if wall else None,
        "kernels_per_step": launches / steps,
        "top_kernels": top_kernels,
        "top_host_ops": top_host,
        "host_ranges_ms": ranges,
    }
    print(
        f"[profile] step {wall * 1e3:.0f} ms wall, GPU busy {busy * 1e3:.0f} ms "
        f"({100 * busy / wall:.0f}%; kernel times summed {summed * 1e3:.0f} ms), "
        f"{launches / steps:.0f} kernels/step",
        flush=True,
    )
    for k in top_kernels:
        print(f"[profile]   {k['ms_per_step']:8.1f} ms  x{k['calls_per_step']:<6.0f} {k['name']}", flush=True)
    for name, ms in ranges.items():
        print(f"[profile] host {name}: {ms:.1f} ms", flush=True)
    for h in top_host:
        print(
            f"[profile] host self {h['self_ms_per_step']:8.1f} ms  x{h['calls']:<6.0f} {h['name']}",
            flush=True,
        )
    if trace_path is not None:
        plain = Path(str(trace_path).removesuffix(".gz"))
        prof.export_chrome_trace(str(plain))
        with plain.open("rb") as src, gzip.open(f"{plain}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
        print(f"[profile] trace {plain}.gz", flush=True)
    return summary


def _site(frames: list[dict[str, Any]]) -> str:
    for frame in frames:
        name = frame.get("filename", "")
        if any(m in name for m in LIBRARY_MARKERS):
            short = name.split("site-packages/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    return "(other)"


def profile_memory(run_step: Callable[[], object], top: int = 15) -> dict[str, Any]:
    """Replay the allocator's history of one `run_step` call; print what was live at its peak."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    try:
        run_step()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    events = snapshot["device_traces"][torch.cuda.current_device()]
    live: dict[int, tuple[int, str]] = {}
    current = before
    peak = before
    at_peak: dict[int, tuple[int, str]] = {}
    freed_preexisting = 0
    for evt in events:
        action = evt["action"]
        if action == "alloc":
            live[evt["addr"]] = (evt["size"], _site(evt.get("frames", [])))
            current += evt["size"]
            if current > peak:
                peak = current
                at_peak = dict(live)
        elif action == "free_completed":
            if evt["addr"] in live:
                current -= live.pop(evt["addr"])[0]
            else:  # allocated before recording started (an earlier step's leftovers)
                current -= evt["size"]
                freed_preexisting += evt["size"]
    by_site: Counter[str] = Counter()
    for size, site in at_peak.values():
        by_site[site] += size
    top_sites = [{"site": s, "gb": b / 1e9} for s, b in by_site.most_common(top)]
    summary: dict[str, Any] = {
        "allocated_before_step_gb": before / 1e9,
        "replayed_peak_gb": peak / 1e9,
        "step_allocations_live_at_peak_gb": sum(s for s, _ in at_peak.values()) / 1e9,
        "top_sites": top_sites,
        "events": len(events),
    }
    print(
        f"[memory] before the step {before / 1e9:.2f} GB; peak {peak / 1e9:.2f} GB; of it allocated during "
        f"the step and live at the peak {summary['step_allocations_live_at_peak_gb']:.2f} GB "
        f"({len(events)} allocator events)",
        flush=True,
    )
    for item in top_sites:
        print(f"[memory]   {item['gb']:6.2f} GB  {item['site']}", flush=True)
    return summary
