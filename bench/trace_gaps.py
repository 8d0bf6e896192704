"""Where a profiled training step's GPU time went: kernels by kind, and the waits between them.

    python -m bench.trace_gaps bench-results/trace-tb-compile-0.json.gz

Reads a Chrome trace written by `python -m bench.speed --profile --trace-dir DIR` (torch.profiler). It takes
the stream with the most kernel time (copies not counted) as the compute stream and prints:

- the span from its first to its last kernel, how long kernels ran, and how long it waited between them;
- those waits by length (many short waits: the host launches slower than the GPU runs; a few long ones:
  the host blocked, e.g. on a synchronisation or a large host-side gather);
- the waits that begin inside each `record_function` range the bench marks (`step:forward`, the
  optimizer's step);
- kernel time by kind (matrix products, compiled Triton kernels, attention, 4-bit dequantisation, ...) and
  the kernels that took the most time.

A step whose waits are a large share of its span is bound by the host, and faster kernels will not help
it; one with few waits is bound by its kernels.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")
GAP_BINS = ((5.0, "< 5 µs"), (20.0, "5–20 µs"), (100.0, "20–100 µs"), (1000.0, "0.1–1 ms"))


def load_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's events (a .gz file is unpacked)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    return list(data["traceEvents"] if isinstance(data, dict) else data)


def kernel_kind(name: str) -> str:
    """A coarse kind for a kernel's name."""
    low = name.lower()
    if low.startswith("memcpy") or low.startswith("memset"):
        return "copies and fills"
    if "dequantize" in low:
        return "4-bit dequantisation (bitsandbytes)"
    if any(k in low for k in ("nvjet", "gemm", "cutlass", "xmma", "splitkreduce")):
        return "matrix products"
    if any(k in low for k in ("sdpa", "flash", "fmha", "cudnn")):
        return "attention"
    if low.startswith("triton_"):
        return "compiled (Triton) kernels"
    if "liger" in low:
        return "fused loss (liger)"
    if "multi_tensor" in low or "adam" in low:
        return "optimizer"
    return "other PyTorch kernels"


def analyse(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Busy and waiting time of the compute stream, by gap length, range and kernel kind."""
    work = [e for e in events if e.get("cat") in GPU_WORK and "dur" in e]
    if not work:
        raise SystemExit("no GPU kernels in this trace: was it recorded with CUDA activity on a GPU?")
    per_stream: Counter[Any] = Counter()
    for e in work:  # by kernel time: a side stream of offload copies can be busier than the compute one
        if e.get("cat") == "kernel":
            per_stream[(e.get("pid"), e.get("tid"))] += float(e["dur"])
    if not per_stream:
        raise SystemExit("no GPU kernels in this trace: was it recorded with CUDA activity on a GPU?")
    stream = per_stream.most_common(1)[0][0]
    kernels = sorted((e for e in work if (e.get("pid"), e.get("tid")) == stream), key=lambda e: e["ts"])
    ranges = [e for e in events if e.get("cat") == "gpu_user_annotation" and "dur" in e]

    def range_of(ts: float) -> str:
        inside = [r for r in ranges if r["ts"] <= ts <= r["ts"] + r["dur"]]
        return min(inside, key=lambda r: r["dur"])["name"] if inside else "(outside the marked ranges)"

    gaps: list[tuple[float, float]] = []  # (length µs, start µs)
    end = float(kernels[0]["ts"])
    busy = 0.0
    for e in kernels:
        start, dur = float(e["ts"]), float(e["dur"])
        if start > end:
            gaps.append((start - end, end))
        busy += max(0.0, start + dur - max(start, end))
        end = max(end, start + dur)
    span = end - float(kernels[0]["ts"])
    by_bin: Counter[str] = Counter()
    for length, _ in gaps:
        label = next((name for limit, name in GAP_BINS if length < limit), "≥ 1 ms")
        by_bin[label] += length
    by_range: Counter[str] = Counter()
    for length, start in gaps:
        by_range[range_of(start)] += length
    by_kind: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for e in kernels:
        by_kind[kernel_kind(e["name"])] += float(e["dur"])
        by_name[e["name"][:100]] += float(e["dur"])
        calls[e["name"][:100]] += 1
    return {
        "stream": list(stream),
        "kernels": len(kernels),
        "span_ms": span / 1e3,
        "busy_ms": busy / 1e3,
        "waiting_ms": sum(g for g, _ in gaps) / 1e3,
        "waits_by_length_ms": {
            k: by_bin[k] / 1e3 for k in [name for _, name in GAP_BINS] + ["≥ 1 ms"] if k in by_bin
        },
        "waits_by_range_ms": {k: v / 1e3 for k, v in by_range.most_common()},
        "kernel_ms_by_kind": {k: v / 1e3 for k, v in by_kind.most_common()},
        "top_kernels": [{"name": n, "ms": v / 1e3, "calls": calls[n]} for n, v in by_name.most_common(12)],
    }


def report(summary: dict[str, Any]) -> list[str]:
    """The summary as printable lines."""
    span = summary["span_ms"]
    lines = [
        f"compute stream {summary['stream']}: {summary['kernels']} kernels over {span:.1f} ms; "
        f"busy {summary['busy_ms']:.1f} ms ({100 * summary['busy_ms'] / span:.0f}%), "
        f"waiting {summary['waiting_ms']:.1f} ms",
        "waits by length: " + ", ".join(f"{k} {v:.1f} ms" for k, v in summary["waits_by_length_ms"].items()),
        "waits by range: " + ", ".join(f"{k} {v:.1f} ms" for k, v in summary["waits_by_range_ms"].items()),
        "kernel time by kind:",
        *(f"  {v:8.1f} ms  {k}" for k, v in summary["kernel_ms_by_kind"].items()),
        "top kernels:",
        *(f"  {k['ms']:8.1f} ms  x{k['calls']:<5d} {k['name']}" for k in summary["top_kernels"]),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "trace", type=Path, help="a Chrome trace (.json or .json.gz) from bench.speed --trace-dir"
    )
    args = parser.parse_args()
    print("\n".join(report(analyse(load_trace(args.trace)))))


if __name__ == "__main__":
    main()
