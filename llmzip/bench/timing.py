"""Timing primitives of bench: variants called round-robin, and the latency summary of one variant's calls.

Kept below the stages so that a benchmark script can time variants it built itself the same way `bench` does.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from llmzip.bench.variants import Variant
from llmzip.config import BenchConfig
from llmzip.progress import progress


def first_rows(feeds: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The first `size` rows (repeated if the eval set is smaller): real text, real padding."""
    n = next(iter(feeds.values())).shape[0]
    idx = np.arange(size) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


# With several threads, the previous variant's thread pool keeps spinning for a while after its call returns
# (PyTorch's OpenMP workers for milliseconds): onnxruntime at 2 threads on 2 cores measured 25-40% slower right
# after a PyTorch call. An untimed pause before each call lets every pool go idle, so each variant starts alike.
SETTLE_S = 0.02


def time_round_robin(
    variants: list[Variant], feeds: list[dict[str, np.ndarray]], config: BenchConfig, label: str
) -> list[np.ndarray]:
    """Latencies in ms, one array per variant; each round times every variant once, in a rotated order."""
    for v, f in zip(variants, feeds):
        for _ in range(config.warmup):
            v.run(f)
    times: list[list[float]] = [[] for _ in variants]
    settle = SETTLE_S if config.threads > 1 else 0.0
    with progress() as bar:
        task = bar.add_task(label, total=config.iterations, info="")
        for r in range(config.iterations):
            for j in range(len(variants)):
                k = (j + r) % len(variants)
                if settle:
                    time.sleep(settle)
                t0 = time.perf_counter()
                variants[k].run(feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
            bar.advance(task)
    return [np.asarray(t) for t in times]


def summary(ms: np.ndarray, batch: int) -> dict[str, Any]:
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "latency_ms": {
            "p50": round(p50, 3),
            "p90": round(p90, 3),
            "p99": round(p99, 3),
            "mean": round(float(ms.mean()), 3),
            "std": round(float(ms.std()), 3),
            "iqr": round(float(np.percentile(ms, 75) - np.percentile(ms, 25)), 3),
        },
        "throughput": round(batch * len(ms) / (ms.sum() / 1e3), 2),
    }
