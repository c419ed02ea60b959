"""``edge-runtime profile``: latency, throughput, memory and power/temperature of a bundle on this device."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from edge_runtime.backends import BuildOptions, get_backend
from edge_runtime.bundle import ModelBundle
from edge_runtime.cache import EngineCache
from edge_runtime.device import cuda_runtime, device_identity, read_board_model, read_thermal_zones
from edge_runtime.profiling import LatencyStats, peak_rss_mb, time_calls
from edge_runtime.tegrastats import TegrastatsSampler, summarize


def gpu_memory_mb() -> dict[str, float] | None:
    """Used/total device memory through cuda-python where it and a GPU exist (on Jetson: shared RAM)."""
    cudart = cuda_runtime()
    if cudart is None:
        return None
    try:
        err, free, total = cudart.cudaMemGetInfo()
    except Exception:
        return None
    if int(err) != 0:
        return None
    return {"used_mb": (total - free) / 2**20, "total_mb": total / 2**20}


def profile_bundle(
    bundle_dir: Path,
    cache_dir: Path | None = None,
    backend_name: str = "auto",
    runs: int = 200,
    batch: int = 1,
    warmup: int = 20,
    root: Path = Path("/"),
) -> dict[str, Any]:
    import numpy as np

    bundle = ModelBundle.load(bundle_dir)
    backend = get_backend(backend_name)
    options = BuildOptions.for_bundle(bundle, read_board_model(root))
    with tempfile.TemporaryDirectory(prefix="edge-profile-") as tmp:
        cache = EngineCache(cache_dir or Path(tmp))
        cached = cache.open(backend, bundle, options, device_identity(root))
        try:
            rng = np.random.default_rng(0)
            feeds = {
                s.name: rng.standard_normal(s.concrete_shape(batch)).astype(s.dtype) for s in bundle.inputs
            }
            temps_before = {z.type: z.temp_c for z in read_thermal_zones(root)}
            sampler = TegrastatsSampler(interval_ms=200)
            sampler.start()
            t0 = time.perf_counter()
            samples = time_calls(lambda: cached.engine.infer(feeds), runs=runs, warmup=warmup)
            wall = time.perf_counter() - t0
            sampler.wait_for(1)
            tegra = summarize(sampler.stop())
            temps_after = {z.type: z.temp_c for z in read_thermal_zones(root)}
        finally:
            cached.engine.close()
    stats = LatencyStats.from_samples(samples, batch=batch)
    return {
        "bundle": bundle.manifest.name,
        "backend": backend.name,
        "backend_version": backend.version(),
        "cache_hit": cached.hit,
        "latency": stats.to_dict(),
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_memory": gpu_memory_mb(),
        "tegrastats": tegra or None,
        "power_source": "tegrastats" if tegra else "sysfs thermal zones (no tegrastats here)",
        "thermal_before_c": temps_before,
        "thermal_after_c": temps_after,
    }
