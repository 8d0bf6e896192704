"""bench.trace_gaps splits a compute stream's span into kernel time and waits, on a trace we write."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from bench.trace_gaps import analyse, kernel_kind

REPO = Path(__file__).resolve().parents[2]


def kernel(name: str, ts: float, dur: float, tid: int = 7) -> dict:
    return {"cat": "kernel", "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid}


def trace() -> list[dict]:
    return [
        {"cat": "gpu_user_annotation", "name": "step:forward", "ts": 0.0, "dur": 150.0, "pid": 0, "tid": 7},
        kernel("nvjet_sm90_tst_256x128", 0.0, 100.0),
        kernel("triton_poi_fused_add_0", 110.0, 50.0),  # a 10 µs wait before it (forward)
        kernel("triton_poi_fused_add_0", 140.0, 40.0),  # overlaps the previous one: counted once
        kernel("void kDequantizeBlockwise<bf16>", 2000.0, 10.0),  # a 1.82 ms wait, outside the range
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 0.0, "dur": 500.0, "pid": 0, "tid": 13},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5.0, "pid": 1, "tid": 1},
    ]


def test_busy_time_and_waits_of_the_compute_stream() -> None:
    summary = analyse(trace())
    assert summary["stream"] == [0, 7] and summary["kernels"] == 4  # the side stream's copy is not in it
    assert summary["span_ms"] == 2.01
    assert abs(summary["busy_ms"] - 0.18) < 1e-9  # 100 + 70 (the union of the two Triton kernels) + 10 µs
    assert abs(summary["waiting_ms"] - 1.83) < 1e-9
    assert summary["waits_by_length_ms"] == {"5–20 µs": 0.01, "≥ 1 ms": 1.82}
    assert summary["waits_by_range_ms"] == {"(outside the marked ranges)": 1.82, "step:forward": 0.01}
    assert summary["kernel_ms_by_kind"]["compiled (Triton) kernels"] == 0.09  # kernel durations, summed


def test_kernel_kinds() -> None:
    assert kernel_kind("nvjet_sm90_tst_320x128") == "matrix products"
    assert kernel_kind("void kDequantizeBlockwise<bf16>") == "4-bit dequantisation (bitsandbytes)"
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert kernel_kind("Memcpy HtoD (Pinned -> Device)") == "copies and fills"


def test_the_command_reads_a_gzipped_trace_and_refuses_one_without_kernels(tmp_path: Path) -> None:
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump({"traceEvents": trace()}, handle)
    run = [sys.executable, "-m", "bench.trace_gaps"]
    out = subprocess.run([*run, str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "4 kernels over 2.0 ms; busy 0.2 ms (9%), waiting 1.8 ms" in out.stdout
    empty = tmp_path / "cpu.json"
    empty.write_text(json.dumps({"traceEvents": trace()[-1:]}), encoding="utf-8")
    out = subprocess.run([*run, str(empty)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode != 0 and "no GPU kernels in this trace" in out.stderr
