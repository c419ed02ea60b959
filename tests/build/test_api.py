"""The documented Python API (PRODUCT-FACTS.md): JetsonDeployment and the module-level functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from edge_deploy import (
    JetsonDeployment,
    convert_to_tensorrt,
    export_to_onnx,
    profile_performance,
    quantize_model,
)
from edge_deploy.model.sample import build_policy, calibration_set
from edge_runtime.errors import EdgeError
from edge_runtime.jetson import GIB
from tests.support import tensorrt_importable

SAMPLE = {"image": torch.zeros(1, 3, 224, 224), "robot_state": torch.zeros(1, 48)}


def test_jetson_model_table_sets_workspace(sample_files: tuple[Path, Path]) -> None:
    assert JetsonDeployment(sample_files[0]).workspace_bytes == GIB  # orin_nano default
    agx = JetsonDeployment(sample_files[0], jetson_model="agx_orin")
    assert agx.module.compute_capability == "8.7" and agx.workspace_bytes == 2 * GIB
    assert JetsonDeployment(sample_files[0], jetson_model="xavier_nx").module.compute_capability == "7.2"
    with pytest.raises(EdgeError, match="Unknown Jetson model 'tx2'"):
        JetsonDeployment(sample_files[0], jetson_model="tx2")


def test_export_to_onnx_from_module(tmp_path: Path) -> None:
    out = export_to_onnx(build_policy(), (SAMPLE["image"], SAMPLE["robot_state"]), tmp_path / "m.onnx")
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["image", "robot_state"]
    assert [o.name for o in model.graph.output] == ["action"]
    assert model.opset_import[0].version >= 15
    assert all(
        vi.type.tensor_type.shape.dim[0].dim_param == "batch"
        for vi in [*model.graph.input, *model.graph.output]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.skipif(tensorrt_importable(), reason="checks the path where TensorRT is absent")
def test_deployment_flow_without_tensorrt(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    d = JetsonDeployment(sample_files[0], jetson_ip="192.0.2.10", jetson_model="orin_nx", workdir=tmp_path)
    onnx_path = d.export_onnx(SAMPLE, tmp_path / "model.onnx")
    conv = d.convert_tensorrt(onnx_path, precision="fp16", max_batch_size=4)
    assert conv.engine_path is None and "engine is built on the device at first start" in conv.note
    assert conv.bundle.manifest.precision == "fp16" and conv.bundle.manifest.batch.max == 4
    assert conv.workspace_bytes == GIB
    latency = d.benchmark(num_runs=5)
    assert isinstance(latency, float) and latency > 0
    # Without a release the image goes over SSH; the robot's host key is checked before anything is built.
    with pytest.raises(EdgeError, match="no known_hosts file"):
        d.deploy(include_ros2=True, auto_start=True, known_hosts=tmp_path / "absent")


def test_convert_to_tensorrt_int8_needs_calibration(tmp_path: Path, make_bundle) -> None:  # type: ignore[no-untyped-def]
    src = make_bundle("fp32").bundle.model_path
    with pytest.raises(EdgeError, match="INT8 needs calibration data"):
        convert_to_tensorrt(src, tmp_path / "m.engine", "int8")
    conv = convert_to_tensorrt(src, tmp_path / "m.engine", "int8", calibration_data=calibration_set(8))
    assert conv.bundle.calibration_path("cache") is not None
    assert conv.bundle.path == tmp_path / "m.bundle"


def test_quantize_model_in_memory(tmp_path: Path) -> None:
    result = quantize_model(build_policy(), calibration_set(8), "int8-minmax", output_dir=tmp_path / "q")
    assert result.bundle.manifest.precision == "int8"
    assert result.validation["int8_vs_fp32"]["passed"]
    with pytest.raises(EdgeError, match="Unknown quantization method"):
        quantize_model(build_policy(), None, "int4", output_dir=tmp_path / "x")


def test_profile_performance(make_bundle, sample_files: tuple[Path, Path]) -> None:  # type: ignore[no-untyped-def]
    stats = profile_performance(make_bundle("int8").bundle.path, "cpu", num_iterations=5)
    assert stats["runs"] == 5 and stats["mean_ms"] > 0 and stats["peak_rss_mb"] > 0
    assert profile_performance(sample_files[0], num_iterations=3)["precision"] == "fp32"
    with pytest.raises(EdgeError, match="edge-runtime profile"):
        profile_performance(sample_files[0], "cuda")


def test_deploy_to_device_maps_every_inventory_field_to_the_robot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import edge_deploy.fleet.operations as operations
    from edge_deploy.api import deploy_to_device
    from edge_deploy.fleet import RolloutOptions

    seen: dict[str, Any] = {}

    def fake_deploy_release(fleet: Any, options: RolloutOptions) -> str:
        seen.update(fleet=fleet, options=options)
        return "ok"

    monkeypatch.setattr(operations, "deploy_release", fake_deploy_release)
    out = deploy_to_device(
        "0.1.0",
        "10.0.0.7",
        {
            "user": "robot",
            "port": 2201,
            "ssh_key": str(tmp_path / "k"),
            "known_hosts": str(tmp_path / "kh"),
            "service_port": 18081,
            "gpu": False,
            "platform": "linux/arm64",
            "jetson_model": "orin_nx",
            "include_ros2": False,
            "health_timeout": 30.0,
        },
    )
    robot = seen["fleet"].robots[0]
    assert out == "ok"
    assert (robot.host, robot.port, robot.user, robot.platform, robot.gpu) == (
        "10.0.0.7",
        2201,
        "robot",
        "linux/arm64",
        False,
    )
    assert robot.ssh_key == tmp_path / "k" and robot.jetson_model == "orin_nx"
    # The rest of the config is the rollout's options (health_timeout: the name of one release ago).
    assert seen["options"] == RolloutOptions(version="0.1.0", include_ros2=False, health_timeout_s=30.0)
    with pytest.raises(EdgeError, match="RolloutOptions has no option 'canary_size'"):
        deploy_to_device("0.1.0", "10.0.0.7", {"canary_size": 1})
