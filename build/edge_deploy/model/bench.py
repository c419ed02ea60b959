"""Latency of a model bundle on the ONNX Runtime backend: the CPU numbers ``edge-deploy bench`` reports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import BuildOptions, check_feeds, get_backend
from edge_runtime.backends.base import shape_ranges
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import InputError
from edge_runtime.profiling import LatencyStats, peak_rss_mb, time_calls


@dataclass
class BenchResult:
    bundle: str
    bundle_sha256: str
    precision: str
    backend: str
    backend_version: str
    build_seconds: float
    latency: LatencyStats
    peak_rss_mb: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "bundle_sha256": self.bundle_sha256,
            "precision": self.precision,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "build_seconds": round(self.build_seconds, 4),
            "threads": self.threads,
            **self.latency.to_dict(),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def bench_bundle(
    path: str | Path,
    runs: int = 100,
    warmup: int = 10,
    batch: int | None = None,
    threads: int = 0,
    seed: int = 0,
) -> BenchResult:
    """Verify the bundle (a tampered or missing file is refused by name), build the engine, time ``runs`` calls."""
    if runs < 1 or warmup < 0:
        raise InputError(
            f"`runs` must be at least 1 and `warmup` at least 0 (got {runs} and {warmup}).",
            option=("runs", "warmup"),
        )
    bundle = ModelBundle.load(path)
    m = bundle.manifest
    batch = m.batch.opt if batch is None else batch
    if not m.batch.min <= batch <= m.batch.max:
        raise InputError(f"Batch size {batch} is outside the bundle's profile {m.batch.min}..{m.batch.max}.")
    backend = get_backend("onnxruntime")
    options = BuildOptions(
        precision=m.precision,
        batch=m.batch,
        intra_op_threads=threads,
        shape_ranges=shape_ranges(bundle.inputs, m.batch),
    )
    t0 = time.perf_counter()
    engine = backend.load(backend.build(bundle, options), bundle, options)
    build_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    feeds = {s.name: rng.standard_normal(s.concrete_shape(batch)).astype(s.dtype) for s in bundle.inputs}
    check_feeds(bundle.inputs, feeds, m.batch)
    try:
        samples = time_calls(lambda: engine.infer(feeds), runs=runs, warmup=warmup)
    finally:
        engine.close()
    return BenchResult(
        str(bundle.path),
        bundle.sha256,
        m.precision,
        backend.name,
        backend.version(),
        build_seconds,
        LatencyStats.from_samples(samples, batch),
        peak_rss_mb(),
        threads,
    )
