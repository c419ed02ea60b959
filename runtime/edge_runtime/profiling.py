"""Latency and memory measurement shared by ``edge-deploy bench``, ``edge-runtime profile`` and ``bench/``."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    batch: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput_per_s: float  # samples (batch items) per second

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray, batch: int = 1) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        mean = float(a.mean())
        return cls(
            runs=int(a.size),
            batch=batch,
            mean_ms=mean,
            p50_ms=float(np.percentile(a, 50)),
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            min_ms=float(a.min()),
            max_ms=float(a.max()),
            std_ms=float(a.std()),
            throughput_per_s=batch * 1000.0 / mean if mean > 0 else float("inf"),
        )


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; return each call's latency in ms."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    for _ in range(max(warmup, 0)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        t0 = clock()
        fn()
        samples.append((clock() - t0) / 1e6)
    return samples


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
