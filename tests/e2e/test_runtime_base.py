"""The runtime image on the JetPack-shaped stand-in base (arm64 under QEMU): it reaches the base's own
TensorRT and cuda-python, reports them, and says why it serves ONNX Runtime where TensorRT finds no GPU.

The stand-in base (scripts/host-setup) holds the REAL TensorRT Python module (tensorrt-cu12-bindings 10.7.0,
aarch64) where python3-libnvinfer puts it on l4t-jetpack, on STAND-IN native libraries whose entry points
return NULL, plus /etc/nv_tegra_release for R36.4, and no python3-venv/python3-pip. No GPU and no CUDA
driver here: TensorRT on a GPU is not exercised.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import BuiltImages
from tests.e2e.test_images import _run_service, _stop

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STANDIN_TENSORRT = "10.7.0"  # the aarch64 bindings in the stand-in base (JetPack 6.1/6.2 ship 10.3)


def run_in_image(
    ref: str, *args: str, entrypoint: str = "python3", timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "--network",
            "none",
            "--entrypoint",
            entrypoint,
            ref,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_probe_reports_tensorrt_l4t_and_no_visible_gpu(built_images: BuiltImages) -> None:
    out = run_in_image(built_images.runtime.ref, "probe", "--json", entrypoint="edge-runtime")
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    assert probe["tensorrt"] == STANDIN_TENSORRT
    assert probe["l4t"]["version"] == "36.4.0" and probe["l4t"]["jetpack"] == "6"
    assert probe["identity"]["l4t"] == "36.4.0"
    assert probe["identity"]["arch"] == "aarch64"
    assert probe["gpu_visible"] is False  # no NVIDIA runtime, no driver: CUDA sees no GPU
    assert probe["identity"]["gpu"] == "cpu"
    text = run_in_image(built_images.runtime.ref, "probe", entrypoint="edge-runtime")
    assert text.returncode == 0, text.stderr
    assert re.search(r"^TensorRT +10\.7\.0$", text.stdout, re.M), text.stdout
    assert re.search(r"^L4T +36\.4\.0 \(JetPack 6\)$", text.stdout, re.M), text.stdout
    assert re.search(r"^GPU visible +no \(CUDA sees none\)$", text.stdout, re.M), text.stdout


def test_tensorrt_is_the_base_s_own_module_through_one_symlink(built_images: BuiltImages) -> None:
    """The venv sees exactly the base's tensorrt package (a symlink into the system Python's
    dist-packages); no TensorRT file is in our layers, and no other system package leaks into the venv."""
    check = (
        "import importlib.util as u, json, os, sys, sysconfig, tensorrt; "
        "site = sysconfig.get_paths()['purelib']; link = os.path.join(site, 'tensorrt'); "
        "print(json.dumps({'file': tensorrt.__file__, 'real': os.path.realpath(tensorrt.__file__), "
        "'islink': os.path.islink(link), 'target': os.readlink(link), 'prefix': sys.prefix, "
        "'system_site': [p for p in sys.path if p.endswith(('dist-packages', 'site-packages')) and "
        "not p.startswith(sys.prefix)], 'pip': u.find_spec('pip') is not None, "
        "'trt_files_in_venv': [os.path.join(d, f) for d, _, fs in os.walk(sys.prefix) for f in fs "
        "if f.startswith(('libnvinfer', 'tensorrt'))]}))"
    )
    out = run_in_image(built_images.runtime.ref, "-c", check)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["prefix"] == "/opt/edge/venv"
    assert found["islink"] and found["target"] == "/usr/lib/python3/dist-packages/tensorrt"
    assert found["file"].startswith("/opt/edge/venv/lib/python3.") and found["file"].endswith(
        "/tensorrt/__init__.py"
    )
    assert found["real"] == "/usr/lib/python3/dist-packages/tensorrt/__init__.py"
    assert found["system_site"] == [], "the venv does not see the base's other packages"
    assert found["trt_files_in_venv"] == [], (
        "os.walk does not follow the symlink: nothing of TensorRT is ours"
    )
    assert found["pip"] is False, "pip ran from the wheelhouse and stays out of the image"


def test_cuda_python_imports_and_reports_no_gpu(built_images: BuiltImages) -> None:
    check = (
        "import json; from cuda.bindings import runtime; from importlib.metadata import version; "
        "err, count = runtime.cudaGetDeviceCount(); "
        "print(json.dumps({'cuda_python': version('cuda-python'), 'bindings': version('cuda-bindings'), "
        "'err': int(err), 'name': err.name}))"
    )
    out = run_in_image(built_images.runtime.ref, "-c", check)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["cuda_python"].startswith("12.") and found["bindings"].startswith("12.")
    # the real bindings, asking CUDA: no driver in this container (on a Jetson without the NVIDIA runtime too)
    assert found["err"] != 0 and found["name"].startswith("cudaError"), found


def _import_times(ref: str, module: str, runs: int = 3) -> list[float]:
    """Cumulative import time of ``module`` in seconds (``-X importtime``), ``runs`` fresh interpreters in one
    container (the first pays the cold page cache)."""
    script = f'for i in $(seq {runs}); do python3 -X importtime -c "import {module}" 2>&1 >/dev/null; done'
    out = run_in_image(ref, "-c", script, entrypoint="sh", timeout=600)
    assert out.returncode == 0, out.stderr
    pattern = re.compile(r"^import time:\s+\d+\s+\|\s+(\d+)\s+\|\s?" + re.escape(module) + r"$", re.M)
    times = [int(us) / 1e6 for us in pattern.findall(out.stdout + out.stderr)]
    assert len(times) == runs, out.stdout[-2000:]
    return times


def test_import_times_of_tensorrt_cuda_python_and_the_cli(
    built_images: BuiltImages, record_property: Any
) -> None:
    """Measured, not judged tightly: QEMU on a loaded 2-core machine varies several-fold. The bound is what
    a health check or a start can afford."""
    ref = built_images.runtime.ref
    for module in ("tensorrt", "cuda.bindings.runtime", "edge_runtime.cli"):
        times = _import_times(ref, module)
        record_property(f"import_s_{module}", [round(t, 3) for t in times])
        assert min(times) < 10.0, (module, times)


def test_serve_tensorrt_refuses_in_one_sentence_without_a_gpu(built_images: BuiltImages) -> None:
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "--network",
            "none",
            built_images.runtime.ref,
            "--backend",
            "tensorrt",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    said = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    errors = [line for line in said if "error" in line.lower()]
    assert len(errors) == 1, said
    assert "no GPU" in errors[0] and "NVIDIA runtime" in errors[0], errors[0]
    assert STANDIN_TENSORRT in errors[0], "the sentence names the TensorRT the base provides"


def test_auto_serves_onnxruntime_and_says_why(built_images: BuiltImages) -> None:
    volume = f"edge-e2e-cache-{uuid.uuid4().hex[:8]}"
    port = 18900 + uuid.uuid4().int % 300
    subprocess.run(["docker", "volume", "create", volume], check=True, capture_output=True, timeout=60)
    try:
        name, _ = _run_service(built_images.runtime.ref, volume, port)
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            logs = _stop(name)
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, timeout=60)
    assert ready["backend"] == "onnxruntime" and ready["backend_requested"] == "auto", ready
    reason = ready["fallback"]
    assert "no GPU" in reason and "NVIDIA runtime" in reason and STANDIN_TENSORRT in reason, reason
    info = next(line for line in metrics.splitlines() if line.startswith("edge_backend_info{"))
    assert 'backend="onnxruntime"' in info and 'requested="auto"' in info and 'fallback="true"' in info, info
    assert "no GPU" in info and info.endswith(" 1.0"), info
    warning = [line for line in logs.splitlines() if "WARNING" in line and "fell back" in line]
    assert warning and "no GPU" in warning[0], logs[-2000:]
