from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge_deploy.errors import PipelineOptionError, ValidationError
from edge_deploy.model import ConvertOptions, convert
from edge_deploy.model.quantize import format_trt_cache, parse_trt_cache, trt_version_tag
from edge_deploy.model.sample import build_policy
from edge_runtime.bundle import ModelBundle, sha256_file


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp32_bundle_manifest(make_bundle: Any, sample_files: tuple[Path, Path]) -> None:
    result = make_bundle("fp32")
    bundle = ModelBundle.load(result.bundle.path)
    m = bundle.manifest
    assert sorted(m.files) == ["model.onnx"]
    assert (m.precision, m.opset, str(m.batch)) == ("fp32", 17, "1,1,8")
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [
        ("image", "float32", ("batch", 3, 224, 224)),
        ("robot_state", "float32", ("batch", 48)),
    ]
    assert [(t.name, t.shape) for t in m.outputs] == [("action", ("batch", 7))]
    assert m.source["sha256"] == sha256_file(sample_files[0]) and m.source["kind"] == "torchscript"
    assert {"torch", "onnx", "onnxruntime", "edge-deploy"} <= set(m.versions)
    v = m.validation["fp32"]
    assert v["passed"] and v["max_abs"] < 1e-3 and v["reference"] == "pytorch"
    assert 1 in v["batches"] and 8 in v["batches"]
    raw = json.loads((bundle.path / "bundle.json").read_text())
    assert raw["schema_version"] == 1 and raw["bundle_sha256"] == bundle.sha256
    assert [s.name for s in result.steps] == [
        "load",
        "calibration data",
        "export",
        "sanitize",
        "validate",
        "write bundle",
    ]
    assert all(s.seconds >= 0 for s in result.steps)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_exported_graph_has_a_real_dynamic_batch(make_bundle: Any, batch: int) -> None:
    bundle = make_bundle("fp32").bundle
    model = onnx.load(str(bundle.model_path))
    for vi in [*model.graph.input, *model.graph.output]:
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch", vi.name
    rng = np.random.default_rng(batch)
    image = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    state = rng.standard_normal((batch, 48)).astype(np.float32)
    (out,) = _session(bundle.model_path).run(["action"], {"image": image, "robot_state": state})
    with torch.no_grad():
        ref = build_policy()(torch.from_numpy(image), torch.from_numpy(state)).numpy()
    assert out.shape == (batch, 7)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_fp16_bundle_keeps_float32_io_and_records_delta(make_bundle: Any) -> None:
    result = make_bundle("fp16")
    m = result.bundle.manifest
    assert sorted(m.files) == ["model.fp32.onnx", "model.onnx"]
    model = onnx.load(str(result.bundle.model_path))
    dtypes = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    assert all(vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for vi in model.graph.input)
    delta = m.validation["fp16_vs_fp32"]
    assert delta["passed"] and 0 < delta["max_abs"] < 2e-2 and delta["data"] == "calibration set"


def test_int8_bundle_is_qdq_with_trt_cache(make_bundle: Any) -> None:
    result = make_bundle("int8")
    b = result.bundle
    assert sorted(b.manifest.files) == ["calibration.cache", "model.fp32.onnx", "model.onnx"]
    assert b.calibration_path("data") is None  # the QDQ model carries its scales
    ops = {n.op_type for n in onnx.load(str(b.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    cache = b.calibration_path("cache")
    assert cache is not None
    header, scales = parse_trt_cache(cache.read_text())
    assert header == "TRT-100300-EntropyCalibration2"
    fp32_tensors = {n for node in onnx.load(str(b.file("model.fp32.onnx"))).graph.node for n in node.output}
    fp32_tensors |= {"image", "robot_state"}
    assert "image" in scales and set(scales) <= fp32_tensors  # names match the fp32 graph TensorRT parses
    assert all(0 < s < 10 for s in scales.values())
    delta = b.manifest.validation["int8_vs_fp32"]
    assert delta["passed"] and 0 < delta["max_abs"] < 0.15
    assert b.manifest.quantization and b.manifest.quantization["method"] == "entropy"


def test_trt_cache_format_round_trips() -> None:
    assert trt_version_tag("8.6.1") == "8601" and trt_version_tag("8.5.2") == "8502"
    assert trt_version_tag("10.3.0") == "100300"
    text = format_trt_cache({"image": 0.0314, "/conv/Relu_output_0": 1.5}, "8.6.1")
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert text.splitlines()[2] == "/conv/Relu_output_0: 3fc00000"  # 1.5 as IEEE-754 float32 bits
    header, scales = parse_trt_cache(text)
    assert header.endswith("EntropyCalibration2") and scales["image"] == pytest.approx(0.0314)


def test_int8_minmax_and_opset_15(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    model, calib = sample_files
    r = convert(
        model,
        tmp_path / "b",
        ConvertOptions(precision="int8", calibration=calib, calibration_method="minmax", opset=15),
    )
    assert r.bundle.manifest.opset == 15
    assert onnx.load(str(r.bundle.file("model.fp32.onnx"))).opset_import[0].version == 15
    assert r.bundle.manifest.quantization is not None
    assert r.bundle.manifest.quantization["method"] == "minmax"


def test_onnx_and_full_module_sources(tmp_path: Path, make_bundle: Any) -> None:
    onnx_src = make_bundle("fp32").bundle.model_path
    r = convert(onnx_src, tmp_path / "from-onnx")
    assert r.bundle.manifest.source["kind"] == "onnx"
    assert "export" not in [s.name for s in r.steps]
    full = tmp_path / "full.pt"
    torch.save(build_policy(), full)
    r2 = convert(full, tmp_path / "from-module")
    assert r2.bundle.manifest.source["kind"] == "module"
    assert r2.bundle.manifest.validation["fp32"]["max_abs"] < 1e-3


def test_opset_below_15_is_refused() -> None:
    with pytest.raises(PipelineOptionError, match="Opset 13 is too old"):
        ConvertOptions(opset=13).check()


def test_accuracy_above_tolerance_fails_and_leaves_nothing(
    tmp_path: Path, sample_files: tuple[Path, Path]
) -> None:
    model, calib = sample_files
    out = tmp_path / "b"
    with pytest.raises(ValidationError, match="int8 model differs from fp32"):
        convert(model, out, ConvertOptions(precision="int8", calibration=calib, tolerance=1e-6))
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(Exception, match="already exists"):
        convert(sample_files[0], out)
    r = convert(sample_files[0], out, ConvertOptions(force=True))
    assert not (out / "keep.txt").exists() and r.bundle.model_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_cli_convert_json_keeps_stdout_clean(tmp_path: Path, sample_files: tuple[Path, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.build.cli_helpers import run_cli

    model, calib = sample_files
    rc, out, err = run_cli(
        capsys,
        "convert",
        model,
        "-o",
        tmp_path / "b",
        "--precision",
        "int8",
        "--calibration",
        calib,
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(out)  # quantizer progress must not leak into stdout
    assert summary["precision"] == "int8" and summary["validation"]["int8_vs_fp32"]["passed"]
    assert [s["name"] for s in summary["steps"]][-1] == "write bundle"
    assert "int8 calibrate + quantize" in err and " s " in err  # steps with timings on stderr


def test_pytorch_onnx_mismatch_fails_validation(
    tmp_path: Path, sample_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_deploy.model import export as export_mod

    real = export_mod.run_torch

    def drifted(*args: Any, **kwargs: Any) -> list[np.ndarray]:
        return [o + 0.01 for o in real(*args, **kwargs)]  # as if the exporter changed the math

    monkeypatch.setattr(export_mod, "run_torch", drifted)
    with pytest.raises(ValidationError, match=r"differs from PyTorch's by 0\.01"):
        convert(sample_files[0], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_plain_module_falls_back_to_dynamo_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = torch.onnx.export

    def legacy_fails(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("dynamo", True):
            raise RuntimeError("legacy exporter cannot trace this module")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    full = tmp_path / "full.pt"
    torch.save(build_policy(), full)
    r = convert(full, tmp_path / "b")
    m = r.bundle.manifest
    assert m.source["exporter"] == "dynamo"
    assert m.opset >= 17 and m.validation["fp32"]["passed"] and 8 in m.validation["fp32"]["batches"]
    assert [(t.name, t.shape) for t in m.outputs] == [("action", ("batch", 7))]
    model = onnx.load(str(r.bundle.model_path))
    assert [vi.type.tensor_type.shape.dim[0].dim_param for vi in model.graph.input] == ["batch", "batch"]


def test_int8_bundle_can_embed_a_calibration_subset(make_bundle: Any) -> None:
    b = make_bundle("int8", embed_calibration=4).bundle
    data = b.calibration_path("data")
    assert data is not None and data.name == "calibration.npz"
    with np.load(data) as npz:
        assert npz["image"].shape == (4, 3, 224, 224) and npz["robot_state"].shape == (4, 48)


class SpatialPolicy(torch.nn.Module):
    """A policy over camera images of any size (conv, then a mean over H and W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(image).mean(dim=(2, 3)))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_pytorch_policy_with_ranged_image_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str
) -> None:
    """Both exporters keep the ranged axes dynamic; validation ran PyTorch against ONNX Runtime at the
    profile's MIN, OPT and MAX shapes."""
    if exporter == "dynamo":
        real_export = torch.onnx.export

        def legacy_fails(*args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("dynamo", True):
                raise RuntimeError("legacy exporter cannot trace this module")
            return real_export(*args, **kwargs)

        monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    torch.manual_seed(0)
    full = tmp_path / "spatial.pt"
    torch.save(SpatialPolicy().eval(), full)
    r = convert(full, tmp_path / "b", ConvertOptions(inputs=("image:Bx3x32..48..64x40..64",)))
    m = r.bundle.manifest
    assert m.source["exporter"] == exporter
    assert m.shape_ranges() == {
        "image": {"min": [1, 3, 32, 40], "opt": [1, 3, 48, 64], "max": [8, 3, 64, 64]}
    }
    assert r.validation["fp32"]["passed"] and r.validation["fp32"]["shapes"] == m.shape_ranges()
    model = onnx.load(str(r.bundle.model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(not d.HasField("dim_value") for d in (dims[0], dims[2], dims[3])) and dims[1].dim_value == 3
    session = ort.InferenceSession(str(r.bundle.model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 3, 37, 61)).astype(np.float32)
    with torch.no_grad():
        want = SpatialPolicy.forward(torch.load(full, weights_only=False), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x})[0], want, atol=1e-5)


def test_cli_convert_takes_a_range_and_refuses_a_bad_one(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.build.cli_helpers import run_cli

    full = tmp_path / "spatial.pt"
    torch.save(SpatialPolicy().eval(), full)
    rc, out, err = run_cli(
        capsys, "convert", full, "-o", tmp_path / "b", "--input", "image:Bx3x32..64x32..64", "--json"
    )
    assert rc == 0, err
    assert "image[batch,3,32..64,32..64]" in err  # the load step shows the ranges
    assert ModelBundle.load(tmp_path / "b").inputs[0].ranges
    assert json.loads(out)["validation"]["fp32"]["shapes"]["image"]["max"] == [8, 3, 64, 64]
    rc, _out, err = run_cli(capsys, "convert", full, "-o", tmp_path / "c", "--input", "image:Bx3x64..32x32")
    assert rc != 0 and "Traceback" not in err
    assert "range '64..32' that is not MIN..MAX or MIN..OPT..MAX with 1 ≤ MIN ≤ OPT ≤ MAX" in err
