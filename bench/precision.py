"""FP32 vs FP16 vs INT8 (QDQ) latency and accuracy of the sample policy with ONNX Runtime on CPU, in one run.

The three bundles are built in a temp dir through the pipeline's Python API, then timed interleaved
(every repeat runs each precision in turn) so machine drift hits all alike; speed-ups are ratios taken
within each repeat. Accuracy is each model against the FP32 ONNX model on held-out inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "precision"
PRECISIONS = ("fp32", "fp16", "int8")
BATCHES = (1, 8)
HELD_OUT_SEED = 4242  # not the calibration seed: accuracy is measured on inputs quantization never saw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision-threads",
        type=int,
        default=1,
        help="precision: ONNX Runtime intra-op threads (default 1: steadier on a shared 2-core machine)",
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _build_bundles(root: Path) -> dict[str, Any]:
    """Convert the sample policy to one bundle per precision; return bundle paths and convert seconds."""
    from edge_deploy.model import ConvertOptions, convert
    from edge_deploy.model.sample import calibration_set, write_sample_policy

    model = root / "policy.pt"
    write_sample_policy(model)
    calib = calibration_set(64)
    out: dict[str, Any] = {}
    for prec in PRECISIONS:
        opts = ConvertOptions(precision=prec, calibration=calib if prec == "int8" else None)
        res = convert(model, root / f"bundle-{prec}", opts)
        out[prec] = {"path": res.bundle.path, "convert_s": res.seconds}
    return out


def _session(model: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def _held_out(batch: int) -> dict[str, np.ndarray]:
    from edge_deploy.model.sample import calibration_set

    return calibration_set(batch, seed=HELD_OUT_SEED)


def _time(sess: Any, feed: dict[str, np.ndarray], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        sess.run(None, feed)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def run(args: Any = None) -> dict[str, Any]:
    import onnxruntime as ort

    runs = getattr(args, "runs", None) or 300
    repeats = getattr(args, "repeats", None) or 5
    threads = getattr(args, "precision_threads", None) or 1
    result: dict[str, Any] = {"runs": runs, "repeats": repeats, "intra_op_threads": threads}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        bundles = _build_bundles(Path(tmp))
        sessions = {p: _session(Path(b["path"]) / "model.onnx", threads) for p, b in bundles.items()}
        # Accuracy against the FP32 ONNX model on 64 held-out samples.
        accuracy: dict[str, dict[str, float]] = {}
        ref_feed = _held_out(64)
        ref = sessions["fp32"].run(None, ref_feed)[0]
        for prec, sess in sessions.items():
            diff = np.abs(sess.run(None, ref_feed)[0].astype(np.float64) - ref)
            accuracy[prec] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
        rows: list[dict[str, Any]] = []
        samples: dict[str, list[float]] = {}
        for batch in BATCHES:
            feed = _held_out(batch)
            p50s: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            p99s: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            ratios: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for _ in range(repeats):  # interleave precisions within each repeat
                for prec in PRECISIONS:
                    t = _time(sessions[prec], feed, runs, warmup=max(10, runs // 10))
                    p50s[prec].append(statistics.median(t))
                    p99s[prec].append(_percentile(t, 99))
                    samples.setdefault(f"{prec} b{batch}", []).extend(round(v, 4) for v in t)
                for prec in PRECISIONS:
                    ratios[prec].append(p50s["fp32"][-1] / p50s[prec][-1])
            for prec in PRECISIONS:
                rows.append(
                    {
                        "batch": batch,
                        "precision": prec,
                        "p50_ms": statistics.median(p50s[prec]),
                        "p50_min": min(p50s[prec]),
                        "p50_max": max(p50s[prec]),
                        "p99_ms": statistics.median(p99s[prec]),
                        "speedup_vs_fp32": statistics.median(ratios[prec]),
                        "speedup_min": min(ratios[prec]),
                        "speedup_max": max(ratios[prec]),
                        "max_abs_err": accuracy[prec]["max_abs"],
                        "mean_abs_err": accuracy[prec]["mean_abs"],
                    }
                )
        result["rows"] = rows
        result["convert_s"] = {p: round(b["convert_s"], 2) for p, b in bundles.items()}
        result["bundle_bytes"] = {
            p: (Path(b["path"]) / "model.onnx").stat().st_size for p, b in bundles.items()
        }
    result["samples_ms"] = samples
    result["machine"] = {
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "note": "CPU ONNX Runtime (CPUExecutionProvider); says nothing about TensorRT on a Jetson.",
    }
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)  # others' work on a shared host skews timings
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
