"""What the HTTP service adds over a raw ``engine.infer`` call, measured in the same run on the same inputs.

The service runs as its own process (as on the robot); the client keeps one HTTP/1.1 connection open and
sends pre-encoded bodies, so client-side encoding is not counted. Raw: the same cached engine loaded in
this process. JSON bodies carry the image as nested lists (the parse dominates); npz is the binary path.
"""

from __future__ import annotations

import http.client
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import ServiceProcess
from bench.models import write_conv_policy_bundle

NAME = "service_overhead"


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _post_timer(port: int, body: bytes, ctype: str, accept: str) -> tuple[http.client.HTTPConnection, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": ctype, "Accept": accept}

    def call() -> float:
        t0 = time.perf_counter_ns()
        conn.request("POST", "/v1/infer", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        dt = (time.perf_counter_ns() - t0) / 1e6
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return dt

    return conn, call


def run(args: Any = None) -> dict[str, Any]:
    import json

    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle
    from edge_runtime.cache import EngineCache
    from edge_runtime.device import device_identity

    runs = getattr(args, "runs", None) or 300
    warmup = 30
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        bundle_dir = write_conv_policy_bundle(root / "bundle")
        bundle = ModelBundle.load(bundle_dir)
        feeds = {s.name: rng.standard_normal(s.concrete_shape(1)).astype(s.dtype) for s in bundle.inputs}
        cache = root / "cache"
        backend = get_backend("onnxruntime")
        engine = EngineCache(cache).open(backend, bundle, BuildOptions(batch=bundle.manifest.batch),
                                         device_identity()).engine
        json_body = json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode()
        buf = io.BytesIO()
        np.savez(buf, **feeds)  # type: ignore[arg-type]
        npz_body = buf.getvalue()

        with ServiceProcess(bundle_dir, cache, backend.name, ["--warmup", "10"]) as svc:
            svc.wait_ready()
            conn_j, post_json = _post_timer(svc.port, json_body, "application/json", "application/json")
            conn_n, post_npz = _post_timer(svc.port, npz_body, "application/x-npz", "application/x-npz")
            for _ in range(warmup):
                engine.infer(feeds)
                post_json()
                post_npz()
            raw, js, nz = [], [], []
            for _ in range(runs):  # interleaved, so drift affects all three alike
                t0 = time.perf_counter_ns()
                engine.infer(feeds)
                raw.append((time.perf_counter_ns() - t0) / 1e6)
                js.append(post_json())
                nz.append(post_npz())
            conn_j.close()
            conn_n.close()
    r, j, n = _percentiles(raw), _percentiles(js), _percentiles(nz)
    rows = [
        {"path": "raw engine.infer", **r, "added_p50_ms": 0.0, "ratio_p50": 1.0},
        {"path": "POST npz", **n, "added_p50_ms": n["p50_ms"] - r["p50_ms"], "ratio_p50": n["p50_ms"] / r["p50_ms"]},
        {"path": "POST JSON", **j, "added_p50_ms": j["p50_ms"] - r["p50_ms"], "ratio_p50": j["p50_ms"] / r["p50_ms"]},
    ]
    return {
        "runs": runs, "backend": backend.name, "model": "conv-policy", "batch": 1,
        "json_body_bytes": len(json_body), "npz_body_bytes": len(npz_body),
        "npz_added_p50_ms": rows[1]["added_p50_ms"], "npz_added_p99_ms": n["p99_ms"] - r["p99_ms"],
        "json_added_p50_ms": rows[2]["added_p50_ms"], "json_added_p99_ms": j["p99_ms"] - r["p99_ms"],
        "goal_added_p50_ms": 0.3, "rows": rows,
    }
