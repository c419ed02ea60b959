"""Cold vs warm time-to-ready of ``edge-runtime serve``: engine built (empty cache) vs loaded from the cache.

Each repeat starts a real service process; cold uses a fresh cache directory, warm reuses the one the cold
start filled. Reported per backend available here (ONNX Runtime everywhere; TensorRT where it imports).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from bench._serve import ServiceProcess, spread
from bench.models import write_conv_policy_bundle

NAME = "startup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--startup-bundle",
        type=Path,
        default=None,
        help="startup: bundle to start (default: a generated conv policy)",
    )


def _backends() -> list[str]:
    out = ["onnxruntime"]
    try:
        from edge_runtime.backends import get_backend

        get_backend("tensorrt")
        out.append("tensorrt")
    except Exception:
        pass
    return out


def run(args: Any = None) -> dict[str, Any]:
    repeats = getattr(args, "repeats", None) or 5
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        bundle = getattr(args, "startup_bundle", None) or write_conv_policy_bundle(root / "bundle")
        rows = []
        result: dict[str, Any] = {
            "repeats": repeats,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "bundle": str(bundle) if getattr(args, "startup_bundle", None) else "conv-policy",
        }
        for backend in _backends():
            cold, warm, builds, loads_cold, loads_warm = [], [], [], [], []
            for i in range(repeats):
                cache = root / f"cache-{backend}-{i}"
                with ServiceProcess(bundle, cache, backend) as svc:
                    cold.append(svc.wait_ready())
                    assert svc.startup["cache_hit"] is False
                    builds.append(svc.startup["build_seconds"])
                    loads_cold.append(svc.startup["engine_seconds"])
                with ServiceProcess(bundle, cache, backend) as svc:
                    warm.append(svc.wait_ready())
                    assert svc.startup["cache_hit"] is True
                    loads_warm.append(svc.startup["engine_seconds"])
            c, w = spread(cold), spread(warm)
            ec, ew = spread(loads_cold), spread(loads_warm)
            for phase, s, e in (("cold (build)", c, ec), ("warm (cache hit)", w, ew)):
                rows.append(
                    {
                        "backend": backend,
                        "start": phase,
                        "ready_s_median": s["median"],
                        "ready_s_min": s["min"],
                        "ready_s_max": s["max"],
                        "ready_s_stdev": s["stdev"],
                        "engine_s_median": e["median"],
                    }
                )
            result[f"{backend}_cold_over_warm"] = c["median"] / w["median"]
            result[f"{backend}_engine_cold_over_warm"] = ec["median"] / ew["median"]
            result[f"{backend}_build_s_median"] = spread(builds)["median"]
        result["rows"] = rows
    return result
