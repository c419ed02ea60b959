"""A model past ONNX's 2 GB protobuf limit, end to end: convert (external data), bundle, image layer, serve.

The model is generated here: a stack of 4096×4096 MatMul + Tanh layers (weights written straight to an
external data file, never one protobuf), sized just over 2 GiB. Each precision runs ``edge-deploy
convert`` in its own process, so its peak RSS is the process's own; then ``edge-runtime serve`` starts on
the fp32 bundle and answers one request, checked against ONNX Runtime on the original file. The layer
size is that of a ``COPY`` of the bundle into an image (``FROM scratch``), built with Docker where it
runs; without Docker the bundle's byte count stands in (a COPY layer is the uncompressed tar of the files).

Everything lives under a temp dir in /tmp and is deleted at the end, image included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "large_model"
WIDTH = 4096
REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--large-gib", type=float, default=2.1, help="large_model: weight bytes of the model, in GiB"
    )
    parser.add_argument(
        "--large-precisions",
        default="fp32,fp16,int8",
        help="large_model: precisions to convert (comma-separated)",
    )


def write_model(path: Path, gib: float) -> dict[str, Any]:
    """A MatMul+Tanh stack whose weights go to ``<path>.data`` layer by layer (bounded memory)."""
    import onnx
    from onnx import TensorProto, helper

    layers = max(1, int(gib * (1 << 30) // (WIDTH * WIDTH * 4)) + 1)
    data = path.with_name(path.name + ".data")
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    offset = 0
    with data.open("wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)).astype(np.float32)
            raw = w.tobytes()
            f.write(raw)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += len(raw)
            inits.append(t)
            prev = "x" if i == 0 else f"h{i - 1}"
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], ["y" if i == layers - 1 else f"h{i}"]))
    graph = helper.make_graph(
        nodes,
        "large_policy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return {"layers": layers, "weight_bytes": offset}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "build"), str(REPO / "runtime"), str(REPO)]),
    }


def _convert(model: Path, out: Path, precision: str, calib: Path | None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "edge_deploy",
        "convert",
        str(model),
        "-o",
        str(out),
        "--precision",
        precision,
    ]
    cmd += ["--batch", "1,1,4", "--json"]
    if calib is not None:
        cmd += ["--calibration", str(calib), "--calibration-method", "minmax"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the largest child's so far
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"convert {precision} failed: {stderr.strip().splitlines()[-1:]}")
    summary = json.loads(stdout)
    return {
        "precision": precision,
        "convert_s": round(seconds, 1),
        "peak_rss_gib": round(usage.ru_maxrss / (1 << 20), 2),
        "steps": {s["name"]: s["seconds"] for s in summary["steps"]},
        "bundle_gib": round(_du(out) / (1 << 30), 3),
        "model_onnx_kib": round((out / "model.onnx").stat().st_size / 1024, 1),
        "files": summary["files"],
        "max_abs": {k: v["max_abs"] for k, v in summary["validation"].items()},
    }


def _layer_size(bundle: Path, tmp: Path) -> tuple[int | None, str]:
    if shutil.which("docker") is None:
        return None, "docker not found"
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY bundle/ /opt/edge/bundle/\n")
    shutil.move(str(bundle), ctx / "bundle")
    tag = f"edge-bench-large:{os.getpid()}"
    try:
        t0 = time.perf_counter()
        build = subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(ctx)], capture_output=True, text=True, timeout=1800
        )
        if build.returncode != 0:
            return None, f"docker build failed: {build.stderr.strip()[-200:]}"
        seconds = time.perf_counter() - t0
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True
        )
        # the containerd image store reports the layer's stored (compressed) content size
        return int(size.stdout.strip()), f"docker build {seconds:.0f} s; image Size"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
        shutil.move(str(ctx / "bundle"), bundle)


def _serve(bundle: Path, original: Path, cache: Path) -> dict[str, Any]:
    import urllib.request

    import onnxruntime as ort

    from bench._serve import ServiceProcess

    x = np.random.default_rng(5).standard_normal((1, WIDTH)).astype(np.float32)
    env = {**_env(), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with ServiceProcess(bundle, cache, "onnxruntime", [], env=env, merge_output=True) as svc:
        svc.wait_ready(timeout_s=900)
        ready = time.perf_counter() - t0
        req = urllib.request.Request(
            svc.url + "/v1/infer",
            data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        t1 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as r:
            got = np.asarray(json.loads(r.read())["outputs"]["y"], np.float32)
        infer_ms = (time.perf_counter() - t1) * 1000
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    want = session.run(["y"], {"x": x})[0]
    del session
    return {
        "serve_ready_s": round(ready, 1),
        "serve_infer_ms": round(infer_ms, 1),
        "serve_max_abs_vs_original": float(np.abs(got - want).max()),
    }


def run(args: Any = None) -> dict[str, Any]:
    gib = float(getattr(args, "large_gib", None) or 2.1)
    precisions = str(getattr(args, "large_precisions", None) or "fp32,fp16,int8").split(",")
    with tempfile.TemporaryDirectory(prefix="bench-large-", dir="/tmp") as tmp:
        root = Path(tmp)
        src = root / "src" / "large.onnx"
        src.parent.mkdir()
        t0 = time.perf_counter()
        info = write_model(src, gib)
        result: dict[str, Any] = {
            "model_weight_gib": round(info["weight_bytes"] / (1 << 30), 3),
            "layers": info["layers"],
            "generate_s": round(time.perf_counter() - t0, 1),
            "cpu_count": os.cpu_count(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        }
        calib = root / "calib.npz"
        np.savez(calib, x=np.random.default_rng(1).standard_normal((8, WIDTH)).astype(np.float32))
        rows = []
        for precision in precisions:
            out = root / f"bundle-{precision}"
            rows.append(_convert(src, out, precision, calib if precision == "int8" else None))
            if precision == "fp32":
                rows[-1].update(_serve(out, src, root / "cache"))
                shutil.rmtree(root / "cache", ignore_errors=True)
                layer, how = _layer_size(out, root)
                rows[-1]["image_layer_gib"] = round(layer / (1 << 30), 3) if layer else None
                rows[-1]["image_layer_note"] = how
            if precision != "fp32":
                shutil.rmtree(out)  # disk: one large bundle at a time beside the source
        result["rows"] = rows
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
