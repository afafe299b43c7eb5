"""Timing loops and latency summaries (milliseconds, numpy percentiles with linear interpolation)."""

import time
from collections.abc import Callable

import numpy as np


def summarize(samples_ms) -> dict:
    """p50/p90/p99/mean/min/max and n of a list of latencies in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": int(a.size),
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "mean_ms": round(float(a.mean()), 4),
        "min_ms": round(float(a.min()), 4),
        "max_ms": round(float(a.max()), 4),
    }


def time_calls(
    fn: Callable[[], object], warmup: int, iters: int, max_seconds: float, min_calls: int = 3
) -> list[float]:
    """Latency in ms of `iters` calls of fn after `warmup` calls; stops early once max_seconds have
    passed and at least `min_calls` timed calls were made."""
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + max_seconds
    for i in range(iters):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1e6)
        if i + 1 >= min_calls and time.perf_counter() > deadline:
            break
    return out


def throughput(fn: Callable[[], object], batch: int, warmup: int, iters: int, max_seconds: float) -> dict:
    """Items per second of a batched call (fn processes `batch` items), with per-call latency."""
    lat = time_calls(fn, warmup, iters, max_seconds, min_calls=2)
    total_s = sum(lat) / 1e3
    return {"batch": batch, "items_per_s": round(batch * len(lat) / total_s, 2), **summarize(lat)}


def ratio(value, base) -> float | None:
    if value is None or base in (None, 0):
        return None
    return round(float(value) / float(base), 3)
