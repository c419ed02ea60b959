"""Contract tests: the TensorRT backend against TensorRT's REAL Python bindings 10.3, 10.13 and 11.4.

This file crosses both sides on purpose (the host's ``convert`` makes the bundles the robot's backend
builds), so it lives here and not under tests/runtime, whose tests never import the host side.

For each version, tests/runtime/tensorrt_harness.py prepares the bindings wheel from PyPI, stand-in native
libraries and type stubs under .edge/tensorrt/<version>/; tests/runtime/tensorrt_contract_cases.py then runs
under pytest in a subprocess with PYTHONPATH=<that version's site>:runtime and LD_LIBRARY_PATH=<its stand-in
libraries> (the three versions of one compiled module cannot share a process). The stand-ins end every
native call, so no engine is built or run here: that needs a Jetson or a GPU host with TensorRT.

The bundles come from the project's own pipeline (tiny policy: fp32; convert at fp16, fp16 without an FP16
graph, int8 with Q/DQ and embedded calibration data; an implicit-INT8 bundle derived from the latter).
Under CI=true, a failure to fetch the wheels is a test failure, never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.conftest import write_tiny_bundle
from tests.runtime.tensorrt_harness import REPO, VERSIONS, HarnessError, prepare
from tests.support import need

CASES = REPO / "tests" / "runtime" / "tensorrt_contract_cases.py"
MIN_CASES = (
    35  # what the cases file holds per version (parametrized); fewer means something was not collected
)


def _implicit_int8(qdq: Path, out: Path) -> Path:
    """An INT8 bundle without Q/DQ nodes (TensorRT's entropy calibrator sets the scales): the Q/DQ bundle's
    FP32 graph as model.onnx, with its calibration data and cache."""
    from edge_runtime.bundle import BundleManifest, ModelBundle, sha256_file

    src = ModelBundle.load(qdq)
    out.mkdir(parents=True)
    shutil.copyfile(qdq / "model.fp32.onnx", out / "model.onnx")
    for name in ("calibration.npz", "calibration.cache"):
        shutil.copyfile(qdq / name, out / name)
    files = {n: sha256_file(out / n) for n in ("model.onnx", "calibration.npz", "calibration.cache")}
    manifest = BundleManifest(
        precision="int8",
        opset=src.manifest.opset,
        inputs=src.inputs,
        outputs=src.outputs,
        batch=src.manifest.batch,
        files=files,
        name="tiny-policy-implicit-int8",
        calibration={"data": "calibration.npz", "cache": "calibration.cache"},
    )
    (out / "bundle.json").write_text(manifest.to_json())
    return ModelBundle.load(out).path


@pytest.fixture(scope="module")
def contract_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from edge_deploy.model import ConvertOptions, convert

    root = tmp_path_factory.mktemp("trt-bundles")
    fp32 = write_tiny_bundle(root / "fp32")
    rng = np.random.default_rng(0)
    calib = root / "calib.npz"
    np.savez(
        calib,
        image=rng.standard_normal((4, 3, 224, 224)).astype(np.float32),
        robot_state=rng.standard_normal((4, 48)).astype(np.float32),
    )
    model = fp32 / "model.onnx"
    # tolerance: these bundles test the build path, not accuracy (the random tiny policy quantizes poorly)
    made = {
        "fp16": convert(model, root / "fp16", ConvertOptions(precision="fp16", tolerance=1.0)),
        "fp16-flag": convert(model, root / "fp16-flag", ConvertOptions(precision="fp16", fp16_onnx=False)),
        "int8-qdq": convert(
            model,
            root / "int8-qdq",
            ConvertOptions(precision="int8", calibration=calib, embed_calibration=4, tolerance=1.0),
        ),
    }
    bundles = {"fp32": str(fp32), **{k: str(r.bundle.path) for k, r in made.items()}}
    bundles["int8-implicit"] = str(_implicit_int8(root / "int8-qdq", root / "int8-implicit"))
    return bundles


def _junit_counts(path: Path) -> tuple[dict[str, int], list[str]]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        c.get("name", "?")
        for c in suite.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    return counts, failed


@pytest.mark.parametrize("version", list(VERSIONS))
def test_tensorrt_backend_against_the_real_bindings(
    version: str, contract_bundles: dict[str, str], tmp_path: Path
) -> None:
    try:
        tree = prepare(version)
    except HarnessError as exc:
        need(False, str(exc))
        raise
    junit = tmp_path / "junit.xml"
    env = tree.env()
    env["EDGE_TRT_CONTRACT_VERSION"] = version
    env["EDGE_TRT_CONTRACT_BUNDLES"] = json.dumps(contract_bundles)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(CASES.relative_to(REPO)),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-W",
            "ignore::DeprecationWarning",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert junit.is_file(), (
        f"the contract run for TensorRT {version} wrote no report:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    )
    counts, failed = _junit_counts(junit)
    assert proc.returncode == 0, (
        f"TensorRT {version}: {len(failed)} contract case(s) failed: {', '.join(failed)}\n{proc.stdout[-6000:]}"
    )
    assert counts["skipped"] == 0, (
        f"TensorRT {version}: {counts['skipped']} case(s) skipped:\n{proc.stdout[-3000:]}"
    )
    assert counts["tests"] >= MIN_CASES, f"TensorRT {version}: only {counts['tests']} cases ran"
    print(f"TensorRT {version}: {counts['tests']} contract cases passed")


def test_stub_cleanup() -> None:
    """The clean-up pass on lines as pybind11-stubgen writes them for TensorRT (no network needed)."""
    import ast

    from tests.runtime.tensorrt_harness import clean_stub

    raw = '''from __future__ import annotations
import typing
class IHostMemory:
    """
    Handles library allocated memory. bool is a word here.
    """
class INetworkDefinition:
    def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights = None, scale: Weights = None, power: Weights = None, channel_axis: int) -> IScaleLayer:
        ...
    def mark_debug(self, tensor: ITensor) -> bool:
        ...
class IPluginV3OneBuild:
    def get_workspace_size(self, in: list[PluginTensorDesc], out: list[PluginTensorDesc]) -> int:
        ...
    def get_error(self, index: int) -> ...:
        ...
    has_implicit_batch: bool
def init_libnvinfer_plugins(logger: capsule, namespace: str) -> bool:
    ...
bool: DataType  # value = <DataType.BOOL: 4>
'''
    out = clean_stub(raw)
    ast.parse(out)  # raw is not even Python: `in` as a name, a required parameter after defaults
    assert (
        "def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights, scale: Weights, power: Weights, channel_axis: int)"
        in out
    )
    assert (
        "def get_workspace_size(self, in_: list[PluginTensorDesc], out: list[PluginTensorDesc]) -> int:"
        in out
    )
    assert "def mark_debug(self, tensor: ITensor) -> builtins.bool:" in out
    assert "    has_implicit_batch: builtins.bool" in out
    assert "def get_error(self, index: int) -> typing.Any:" in out
    assert "def init_libnvinfer_plugins(logger: typing.Any, namespace: str) -> builtins.bool:" in out
    assert "\nbool: DataType" in out and "bool is a word here" in out  # the DataType and docstrings stay
    assert "class IHostMemory:\n    def __buffer__(self, flags: int, /) -> memoryview: ..." in out
    assert "\nimport builtins\n" in out
