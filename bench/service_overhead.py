"""What the HTTP service adds over a raw ``engine.infer`` call, measured in the same run on the same inputs.

The service runs as its own process (as on the robot); the client keeps one HTTP/1.1 connection open and
sends pre-encoded bodies, so client-side encoding is not counted. Raw: the same cached engine loaded in
this process. Two models: the conv policy with a full 224×224 image (JSON bodies carry it as nested
lists, so parsing dominates; npz and the Open Inference Protocol's binary tensor extension ("v2 binary",
raw bytes after a JSON header) are the binary paths), and the same interface with an 8×8 image, whose
~1.5 KB body shows the fixed per-request cost of the HTTP stack.
"""

from __future__ import annotations

import http.client
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import ServiceProcess
from bench.models import write_conv_policy_bundle, write_small_io_bundle
from edge_runtime.oip import encode_request

NAME = "service_overhead"


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def _post_timer(
    port: int, body: bytes, ctype: str, path: str = "/v1/infer", extra: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, Callable[[], float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": ctype, "Accept": ctype, **(extra or {})}

    def call() -> float:
        t0 = time.perf_counter_ns()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        dt = (time.perf_counter_ns() - t0) / 1e6
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return dt

    return conn, call


def _measure(
    bundle_dir: Path, cache: Path, runs: int, with_json: bool, serve_args: list[str]
) -> dict[str, Any]:
    """Alternate blocks of raw, npz (and JSON) calls: drift affects all alike, and each path runs warm."""
    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle
    from edge_runtime.cache import EngineCache
    from edge_runtime.device import device_identity

    bundle = ModelBundle.load(bundle_dir)
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.concrete_shape(1)).astype(s.dtype) for s in bundle.inputs}
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch)
    engine = EngineCache(cache).open(backend, bundle, options, device_identity()).engine
    buf = io.BytesIO()
    np.savez(buf, **feeds)  # type: ignore[arg-type]
    v2_body, v2_header = encode_request(feeds)  # binary inputs, binary outputs: what tritonclient sends
    v2_path = f"/v2/models/{bundle.manifest.name}/infer"
    bodies: dict[str, tuple[bytes, str, str, dict[str, str]]] = {
        "npz": (buf.getvalue(), "application/x-npz", "/v1/infer", {}),
        "v2 binary": (
            v2_body,
            "application/octet-stream",
            v2_path,
            {"Inference-Header-Content-Length": str(v2_header)},
        ),
    }
    if with_json:
        bodies["JSON"] = (
            json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode(),
            "application/json",
            "/v1/infer",
            {},
        )
    samples: dict[str, list[float]] = {"raw": [], **{k: [] for k in bodies}}

    def raw_call() -> float:
        t0 = time.perf_counter_ns()
        engine.infer(feeds)
        return (time.perf_counter_ns() - t0) / 1e6

    block = 25
    with ServiceProcess(bundle_dir, cache, backend.name, ["--warmup", "10", *serve_args]) as svc:
        svc.wait_ready()
        clients = {k: _post_timer(svc.port, *spec) for k, spec in bodies.items()}
        calls: dict[str, Callable[[], float]] = {
            "raw": raw_call,
            **{k: c for k, (_conn, c) in clients.items()},
        }
        for i in range(-(-runs // block) + 1):  # the first round of blocks is warm-up
            for kind, call in calls.items():
                got = [call() for _ in range(block)]
                if i > 0:
                    samples[kind].extend(got)
        for conn, _call in clients.values():
            conn.close()
    engine.close()
    return {
        "stats": {k: _percentiles(v) for k, v in samples.items()},
        "body_bytes": {k: len(spec[0]) for k, spec in bodies.items()},
    }


def _http_floor(body: bytes, runs: int) -> dict[str, float]:
    """Round trip to a no-op ASGI app on the same uvicorn: what any Python HTTP service costs here."""
    import subprocess
    import sys

    from bench._serve import free_port

    port = free_port()
    code = f"import uvicorn; uvicorn.run('bench._floor_app:app', port={port}, log_level='warning', lifespan='off')"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn, call = _post_timer(port, body, "application/x-npz")
                call()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the no-op ASGI app did not start") from None
                time.sleep(0.05)
        samples = [call() for _ in range(runs + 30)][30:]
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return _percentiles(samples)


def _row(
    model: str, path: str, stats: dict[str, float], body_bytes: int, raw: dict[str, float] | None
) -> dict:
    return {
        "model": model,
        "path": path,
        **stats,
        "body_kb": body_bytes / 1024,
        "added_p50_ms": stats["p50_ms"] - raw["p50_ms"] if raw else stats["p50_ms"],
        "added_p99_ms": stats["p99_ms"] - raw["p99_ms"] if raw else stats["p99_ms"],
        "ratio_p50": stats["p50_ms"] / raw["p50_ms"] if raw else float("nan"),
    }


def run(args: Any = None) -> dict[str, Any]:
    import os
    import platform

    runs = getattr(args, "runs", None) or 300
    rows = []
    result: dict[str, Any] = {
        "runs": runs,
        "backend": "onnxruntime",
        "batch": 1,
        "goal_added_p50_ms": 0.3,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    try:
        import httptools  # noqa: F401

        result["http_parser"] = "httptools"
    except ImportError:
        result["http_parser"] = "h11"
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        for model, writer, with_json in (
            ("conv-policy 224x224", write_conv_policy_bundle, True),
            ("small-io 8x8", write_small_io_bundle, False),
        ):
            bundle_dir = writer(root / model.split()[0])
            cache = root / f"cache-{model.split()[0]}"
            for mode, serve_args in (("", []), (" inline", ["--inline-infer"])):
                m = _measure(bundle_dir, cache, runs, with_json and not mode, serve_args)
                raw = m["stats"]["raw"]
                rows.append(_row(model, f"raw engine.infer{mode and ' (inline run)'}", raw, 0, raw))
                for kind, size in m["body_bytes"].items():
                    rows.append(_row(model, f"POST {kind}{mode}", m["stats"][kind], size, raw))
            if not with_json:
                floor = _http_floor(b"y" * m["body_bytes"]["npz"], runs)
                rows.append(_row(model, "no-op ASGI app (HTTP floor)", floor, m["body_bytes"]["npz"], None))
    by = {(r["model"].split()[0], r["path"]): r for r in rows}
    result.update(
        npz_added_p50_ms=by[("conv-policy", "POST npz")]["added_p50_ms"],
        npz_added_p99_ms=by[("conv-policy", "POST npz")]["added_p99_ms"],
        npz_inline_added_p50_ms=by[("conv-policy", "POST npz inline")]["added_p50_ms"],
        json_added_p50_ms=by[("conv-policy", "POST JSON")]["added_p50_ms"],
        json_added_p99_ms=by[("conv-policy", "POST JSON")]["added_p99_ms"],
        v2_binary_added_p50_ms=by[("conv-policy", "POST v2 binary")]["added_p50_ms"],
        v2_binary_added_p99_ms=by[("conv-policy", "POST v2 binary")]["added_p99_ms"],
        v2_binary_inline_added_p50_ms=by[("conv-policy", "POST v2 binary inline")]["added_p50_ms"],
        fixed_added_p50_ms=by[("small-io", "POST npz")]["added_p50_ms"],
        fixed_added_p99_ms=by[("small-io", "POST npz")]["added_p99_ms"],
        fixed_inline_added_p50_ms=by[("small-io", "POST npz inline")]["added_p50_ms"],
        fixed_v2_added_p50_ms=by[("small-io", "POST v2 binary")]["added_p50_ms"],
        fixed_v2_added_p99_ms=by[("small-io", "POST v2 binary")]["added_p99_ms"],
        fixed_v2_inline_added_p50_ms=by[("small-io", "POST v2 binary inline")]["added_p50_ms"],
        http_floor_p50_ms=by[("small-io", "no-op ASGI app (HTTP floor)")]["p50_ms"],
        rows=rows,
    )
    return result
