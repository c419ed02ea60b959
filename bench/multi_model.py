"""Two models served side by side from one model repository: throughput and p99 against client concurrency
(1, 2, 4, 8) for request slots 1, 2 and 4, and a declared pipeline against the same two models called as two
client round trips.

The service runs as its own process (``edge-runtime serve --models``, ONNX Runtime on the CPU, one intra-op
thread per run so slots, not ONNX Runtime's own threads, spread the work over the cores). Models: a
detector-like CNN (image 224×224 → Conv(3→8) → Relu → Conv(8→3) → ``features`` [1,3,224,224] and a score)
and the conv policy of ``service_overhead``; the pipeline feeds the detector's ``features`` to the policy's
``image``. Every request is the Open Inference Protocol's binary tensor extension (what tritonclient sends);
each client thread keeps one HTTP/1.1 connection, requests alternate between the two models.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import ServiceProcess
from bench.models import write_conv_policy_bundle
from edge_runtime.oip import HEADER_LENGTH, encode_request

NAME = "multi_model"
CONCURRENCY = (1, 2, 4, 8)
SLOTS = (1, 2, 4)
PIPELINES = {
    "version": 1,
    "pipelines": [
        {
            "name": "perceive-act",
            "steps": [{"model": "detector"}, {"model": "policy", "inputs": {"image": "detector.features"}}],
            "outputs": ["policy.action"],
        }
    ],
}


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--mm-requests", type=int, default=240, help="multi_model: requests per concurrency row"
    )


def _repository(root: Path) -> Path:
    from tests.runtime.bundles import write_detector_bundle

    write_detector_bundle(root / "detector", image_hw=224, channels=8)
    write_conv_policy_bundle(root / "policy")
    (root / "pipelines.json").write_text(json.dumps(PIPELINES))
    return root


class Client:
    """One keep-alive connection posting v2 binary bodies; decodes binary outputs."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def infer(self, model: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        body, header = encode_request(feeds)
        headers = {"Content-Type": "application/octet-stream"}
        if header is not None:
            headers[HEADER_LENGTH] = str(header)
        t0 = time.perf_counter_ns()
        self.conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        dt = (time.perf_counter_ns() - t0) / 1e6
        if resp.status != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status}: {data[:200]!r}")
        length = int(resp.getheader(HEADER_LENGTH) or len(data))
        doc = json.loads(data[:length])
        out, offset = {}, length
        for o in doc["outputs"]:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(data[offset : offset + size], np.float32).reshape(o["shape"])
            offset += size
        return out, dt

    def close(self) -> None:
        self.conn.close()


def _inputs() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    state = rng.standard_normal((1, 48)).astype(np.float32)
    return {"detector": {"image": image}, "policy": {"image": image, "robot_state": state}}


def _concurrency_row(port: int, slots: int, concurrency: int, total: int) -> dict[str, Any]:
    inputs = _inputs()
    models = ["detector", "policy"]
    per_thread = max(total // concurrency, 4)
    latencies: dict[str, list[float]] = {m: [] for m in models}
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        client = Client(port)
        try:
            for k in range(2):  # warm the connection, not counted
                client.infer(models[(i + k) % 2], inputs[models[(i + k) % 2]])
            start.wait()
            for k in range(per_thread):
                m = models[(i + k) % 2]
                _, dt = client.infer(m, inputs[m])
                with lock:
                    latencies[m].append(dt)
        except BaseException as exc:
            errors.append(exc)
            start.abort()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    every = np.array(latencies["detector"] + latencies["policy"])
    return {
        "test": "concurrency",
        "slots": slots,
        "concurrency": concurrency,
        "requests": int(every.size),
        "throughput_rps": every.size / wall,
        "p50_ms": float(np.percentile(every, 50)),
        "p99_ms": float(np.percentile(every, 99)),
        "detector_p99_ms": float(np.percentile(latencies["detector"], 99)),
        "policy_p99_ms": float(np.percentile(latencies["policy"], 99)),
    }


def _pipeline_rows(port: int, runs: int) -> list[dict[str, Any]]:
    """Alternate blocks of the pipeline and the two round trips; check they agree."""
    inputs = _inputs()
    client = Client(port)
    samples: dict[str, list[float]] = {"pipeline": [], "two round trips": []}

    def two_trips() -> tuple[np.ndarray, float]:
        det, t1 = client.infer("detector", inputs["detector"])
        feeds = {
            "image": np.ascontiguousarray(det["features"]),
            "robot_state": inputs["policy"]["robot_state"],
        }
        act, t2 = client.infer("policy", feeds)
        return act["action"], t1 + t2

    piped, _ = client.infer("perceive-act", inputs["policy"])
    direct, _ = two_trips()
    np.testing.assert_allclose(piped["action"], direct, rtol=1e-4, atol=1e-5)
    block = 20
    for _ in range(max(runs // block, 1)):
        for _ in range(block):
            samples["pipeline"].append(client.infer("perceive-act", inputs["policy"])[1])
        for _ in range(block):
            samples["two round trips"].append(two_trips()[1])
    client.close()
    sent = {"pipeline": 3 * 224 * 224 * 4 + 48 * 4, "two round trips": 3 * (3 * 224 * 224 * 4) + 48 * 4}
    return [
        {
            "test": "pipeline",
            "path": path,
            "requests": len(v),
            "p50_ms": float(np.percentile(v, 50)),
            "p99_ms": float(np.percentile(v, 99)),
            "tensor_bytes_over_http": sent[path],
        }
        for path, v in samples.items()
    ]


def run(args: Any = None) -> dict[str, Any]:
    """Both slot settings served at once by two processes, rows interleaved and repeated: drift from other
    work on the machine hits every setting alike; each row is the median of the repeats."""
    import contextlib
    import os
    import platform
    import statistics

    total = getattr(args, "mm_requests", None) or 240
    runs = getattr(args, "runs", None) or 200
    repeats = getattr(args, "repeats", None) or 3
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-multi-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        repo = _repository(root / "models")
        ports: dict[int, int] = {}
        for slots in SLOTS:
            extra = ["--models", str(repo), "--slots", str(slots), "--threads", "1", "--warmup", "2"]
            svc = stack.enter_context(ServiceProcess(None, root / "cache", "onnxruntime", extra))
            svc.wait_ready(timeout_s=300)
            ports[slots] = svc.port
        samples: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for _ in range(repeats):
            for c in CONCURRENCY:
                for slots in SLOTS:
                    samples.setdefault((slots, c), []).append(_concurrency_row(ports[slots], slots, c, total))
        for (slots, c), got in sorted(samples.items()):
            row = {"test": "concurrency", "slots": slots, "concurrency": c, "requests": got[0]["requests"]}
            for k in ("throughput_rps", "p50_ms", "p99_ms", "detector_p99_ms", "policy_p99_ms"):
                row[k] = statistics.median(g[k] for g in got)
            row["throughput_rps_range"] = [
                min(g["throughput_rps"] for g in got),
                max(g["throughput_rps"] for g in got),
            ]
            row["p99_ms_range"] = [min(g["p99_ms"] for g in got), max(g["p99_ms"] for g in got)]
            rows.append(row)
        rows += _pipeline_rows(ports[SLOTS[0]], runs)
    pipe = {r["path"]: r for r in rows if r["test"] == "pipeline"}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "backend": "onnxruntime (1 intra-op thread per run)",
        "batch": 1,
        "repeats": repeats,
        "load_average_1m": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        "pipeline_p50_ms": pipe["pipeline"]["p50_ms"],
        "two_round_trips_p50_ms": pipe["two round trips"]["p50_ms"],
        "pipeline_saving_p50_ms": pipe["two round trips"]["p50_ms"] - pipe["pipeline"]["p50_ms"],
        "pipeline_saving_p99_ms": pipe["two round trips"]["p99_ms"] - pipe["pipeline"]["p99_ms"],
        "rows": rows,
    }
