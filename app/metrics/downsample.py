"""Shrink a long series for a chart without hiding what matters: spikes and non-finite values survive.

Min/max buckets are the default: every bucket contributes its lowest and highest point (in step
order), so a single loss spike among 100k points is still drawn. LTTB (largest triangle three
buckets) is offered for smoother shapes. Both are pure Python: the app does not depend on numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[int, float | None]  # (step, value); None marks a non-finite value (NaN/inf)


def downsample_minmax(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most `max_points` points: per bucket the min and the max (and the first non-finite point).

    The first and last points are always kept: a chart must start where the run started and end at the
    latest value, onto which the live stream appends.
    """
    n = len(points)
    if n <= max_points:
        return list(points)
    if max_points < 8:
        # too few points for buckets plus both ends: an even sample is the honest choice
        if max_points < 2:
            return [points[-1]][:max_points]
        return [points[round(i * (n - 1) / (max_points - 1))] for i in range(max_points)]
    has_gaps = any(v is None for _, v in points)
    per_bucket = 3 if has_gaps else 2
    buckets = max(1, (max_points - 2) // per_bucket)
    out: list[Point] = []
    for b in range(buckets):
        lo = b * n // buckets
        hi = (b + 1) * n // buckets
        if lo >= hi:
            continue
        i_min = i_max = i_gap = -1
        v_min = v_max = 0.0
        for i in range(lo, hi):
            v = points[i][1]
            if v is None:
                if i_gap < 0:
                    i_gap = i
                continue
            if i_min < 0 or v < v_min:
                i_min, v_min = i, v
            if i_max < 0 or v > v_max:
                i_max, v_max = i, v
        chosen = {i for i in (i_min, i_max, i_gap) if i >= 0} or {lo}
        if b == 0:
            chosen.add(0)
        if b == buckets - 1:
            chosen.add(n - 1)
        out.extend(points[i] for i in sorted(chosen))
    return out


def downsample_lttb(points: Sequence[Point], max_points: int) -> list[Point]:
    """Largest-triangle-three-buckets to at most `max_points` points (non-finite points are dropped first)."""
    finite: list[Point] = [(s, v) for s, v in points if v is not None]
    n = len(finite)
    if n <= max_points or max_points < 3:
        return finite if n <= max_points else [finite[0], finite[-1]][:max_points]
    out: list[Point] = [finite[0]]
    every = (n - 2) / (max_points - 2)
    a = 0
    for i in range(max_points - 2):
        start = int(i * every) + 1
        end = int((i + 1) * every) + 1
        nxt_start, nxt_end = end, min(int((i + 2) * every) + 1, n)
        if nxt_start >= nxt_end:
            nxt_start, nxt_end = n - 1, n
        avg_x = sum(finite[j][0] for j in range(nxt_start, nxt_end)) / (nxt_end - nxt_start)
        avg_y = sum(finite[j][1] or 0.0 for j in range(nxt_start, nxt_end)) / (nxt_end - nxt_start)
        ax, ay = finite[a][0], finite[a][1] or 0.0
        best, best_area = start, -1.0
        for j in range(start, min(end, n - 1)):
            x, y = finite[j][0], finite[j][1] or 0.0
            area = abs((ax - avg_x) * (y - ay) - (ax - x) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        out.append(finite[best])
        a = best
    out.append(finite[-1])
    return out


def downsample(points: Sequence[Point], max_points: int, method: str = "minmax") -> list[Point]:
    """Dispatch to `downsample_minmax` (default) or `downsample_lttb`."""
    if method == "lttb":
        return downsample_lttb(points, max_points)
    return downsample_minmax(points, max_points)
