"""Bring your own ONNX: files other tools wrote convert, serve through ``edge-runtime serve`` and match
ONNX Runtime on the original file; external data travels end to end; bad files end in one sentence."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bench._serve import ServiceProcess

from edge_deploy.api import convert_to_tensorrt
from edge_deploy.errors import InputError, ModelLoadError, PipelineOptionError
from edge_deploy.model import ConvertOptions, convert
from edge_deploy.model.loading import load_model, parse_input_override
from edge_deploy.model.validate import random_inputs
from edge_runtime.bundle import AxisRange, ModelBundle
from tests.build.cli_helpers import run_cli
from tests.build.onnx_corpus import ONNX_DATA

REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)]),
    "PYTHONUNBUFFERED": "1",
}
SQUEEZENET = ONNX_DATA / "light" / "light_squeezenet.onnx"  # model zoo file: IR 3, opset 9, batch fixed to 1
CONV2D = ONNX_DATA / "pytorch-converted" / "test_Conv2d" / "model.onnx"  # IR 3, opset 6, batch fixed to 2


def _infer(url: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode()
    req = urllib.request.Request(url + "/v1/infer", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = json.loads(r.read())
    return {k: np.asarray(v, np.float32) for k, v in body["outputs"].items()}


def _serve_matches_original(bundle: Path, original: Path, cache: Path, atol: float) -> None:
    b = ModelBundle.load(bundle)
    feeds = random_inputs(b.inputs, b.manifest.batch.opt, seed=21)
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds), strict=True))
    with ServiceProcess(bundle, cache, "onnxruntime", [], env=ENV, merge_output=True) as svc:
        svc.wait_ready(timeout_s=90)
        got = _infer(svc.url, feeds)
    assert set(got) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, atol=atol, rtol=1e-4)


def test_old_ir_opset9_zoo_classifier_converts_and_serves(tmp_path: Path) -> None:
    result = convert(SQUEEZENET, tmp_path / "b", ConvertOptions(precision="fp32"))
    m = result.bundle.manifest
    assert str(m.batch) == "1,1,1"  # the batch the model fixes, not the default 1,1,8
    assert m.opset == 13 and m.source["opset"] == 9 and m.source["ir_version"] == 3
    assert any("initializer" in n for n in m.source["notes"])
    assert result.validation["fp32"]["reference"] == "onnxruntime (original ONNX file)"
    _serve_matches_original(result.bundle.path, SQUEEZENET, tmp_path / "cache", atol=1e-5)


def test_static_batch_model_converts_at_its_batch_and_serves(tmp_path: Path) -> None:
    result = convert(CONV2D, tmp_path / "b", ConvertOptions(precision="fp16"))
    assert str(result.bundle.manifest.batch) == "2,2,2"
    assert result.bundle.inputs[0].shape == (2, 3, 7, 5)
    assert result.validation["fp32"]["batches"] == [2]
    _serve_matches_original(result.bundle.path, CONV2D, tmp_path / "cache", atol=2e-2)


def _external_mlp(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).eval()
    raw = tmp / "raw.onnx"
    torch.onnx.export(
        net,
        (torch.randn(2, 32),),
        str(raw),
        input_names=["obs"],
        output_names=["act"],
        dynamic_axes={"obs": {0: "batch"}, "act": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    src = tmp / "src" / "policy.onnx"
    src.parent.mkdir()
    onnx.save_model(
        onnx.load(str(raw)),
        str(src),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="policy.weights",
        size_threshold=0,
    )
    return src


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_external_data_model_end_to_end(tmp_path: Path, precision: str) -> None:
    src = _external_mlp(tmp_path)
    assert (src.parent / "policy.weights").stat().st_size > 30_000
    calib = random_inputs(load_model(src).inputs, 16, seed=2) if precision == "int8" else None
    result = convert(src, tmp_path / "b", ConvertOptions(precision=precision, calibration=calib))
    m = result.bundle.manifest
    assert m.model_data == "model.onnx.data" and "model.onnx.data" in m.files
    # The model file holds no weights: they live in the data file, found beside it by ONNX Runtime.
    assert os.path.getsize(result.bundle.model_path) < 20_000
    assert (result.bundle.path / "model.onnx.data").stat().st_size > 10_000
    atol = {"fp32": 1e-5, "fp16": 2e-2, "int8": 0.15}[precision]
    _serve_matches_original(result.bundle.path, src, tmp_path / "cache", atol=atol)


def test_external_data_file_is_hashed_like_every_bundle_file(tmp_path: Path) -> None:
    result = convert(_external_mlp(tmp_path), tmp_path / "b", ConvertOptions())
    data = result.bundle.path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(Exception, match=r"Bundle file model.onnx.data does not match bundle.json"):
        ModelBundle.load(result.bundle.path)


def test_model_onnx_runtime_rejects_ends_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(str(CONV2D))
    model.graph.node[0].op_type = "NoSuchOperator"
    bad = tmp_path / "bad.onnx"
    onnx.save_model(model, str(bad))
    with pytest.raises(ModelLoadError, match=r"^ONNX Runtime rejects bad.onnx: .*NoSuchOperator.*\.$"):
        load_model(bad)
    code, _out, err = run_cli(capsys, "convert", bad, "-o", tmp_path / "out")
    assert code != 0 and "Traceback" not in err
    assert "error: ONNX Runtime rejects bad.onnx" in err
    assert not (tmp_path / "out").exists()


def test_opset6_file_onnx_runtime_no_longer_runs_is_refused_in_one_sentence() -> None:
    # A PyTorch-converted file from ONNX's own test data: BatchNormalization-6 has no kernel in ONNX Runtime.
    path = ONNX_DATA / "pytorch-converted" / "test_BatchNorm2d_eval" / "model.onnx"
    with pytest.raises(
        ModelLoadError, match=r"^ONNX Runtime rejects model.onnx: .*BatchNormalization\(6\).*\.$"
    ):
        load_model(path)


def _dynamic_seq_model(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.GRU(8, 16, batch_first=True).eval()
    path = tmp / "gru.onnx"
    torch.onnx.export(
        net,
        (torch.randn(2, 5, 8),),
        str(path),
        input_names=["x"],
        output_names=["y", "h"],
        dynamic_axes={"x": {0: "batch", 1: "steps"}, "y": {0: "batch", 1: "steps"}},
        opset_version=14,
        dynamo=False,
    )
    return path


def test_dynamic_non_batch_axis_is_fixed_with_input_override(tmp_path: Path) -> None:
    path = _dynamic_seq_model(tmp_path)
    with pytest.raises(
        InputError,
        match=r"Input 'x' has a dynamic axis 1 \('steps'\) with no size range; give `inputs` one, "
        r"e.g. x:B,MIN..MAX,8",
    ) as refused:
        load_model(path)
    assert refused.value.spelled({"inputs": "--input"}).startswith("Input 'x'")
    assert "give --input one, e.g. x:B,MIN..MAX,8" in refused.value.spelled({"inputs": "--input"})
    result = convert(path, tmp_path / "b", ConvertOptions(inputs=("x:Bx7x8:float32",)))
    assert result.bundle.inputs[0].shape == ("batch", 7, 8)
    assert [o.name for o in result.bundle.outputs] == ["y", "h"]  # several outputs kept by name


def test_input_override_dtype() -> None:
    assert parse_input_override("tokens:Bx16:int64") == ("tokens", (16,), "int64", ())
    assert parse_input_override("image:Bx3x8x8") == ("image", (3, 8, 8), None, ())
    with pytest.raises(PipelineOptionError, match=r"names dtype 'complex64'; choose one of"):
        parse_input_override("x:Bx4:complex64")
    with pytest.raises(InputError, match=r"names dtype float32, but the ONNX model takes int64"):
        load_model(ONNX_DATA / "pytorch-converted" / "test_Embedding" / "model.onnx", ["0:1x4:float32"])


class SpatialNet(torch.nn.Module):
    """A conv net over images of any size: obs [N, 3, H, W] and a mask [N, 1, H, W] sharing H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.conv(obs) * mask).mean(dim=(2, 3))


def _spatial_model(tmp: Path) -> Path:
    torch.manual_seed(0)
    path = tmp / "spatial.onnx"
    torch.onnx.export(
        SpatialNet().eval(),
        (torch.randn(2, 3, 40, 40), torch.rand(2, 1, 40, 40)),
        str(path),
        input_names=["obs", "mask"],
        output_names=["feat"],
        dynamic_axes={"obs": {0: "batch", 2: "H", 3: "W"}, "mask": {0: "batch", 2: "H", 3: "W"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_shape_range_syntax() -> None:
    ov = parse_input_override("obs:Bx3x96..224x96..160..224:float32")
    assert ov.dims == (3, "obs_2", "obs_3") and ov.dtype == "float32"
    assert ov.ranges == (AxisRange(2, 96, 224, 224), AxisRange(3, 96, 160, 224))  # OPT defaults to MAX
    assert parse_input_override("obs:B,3,8..16,8").ranges == (AxisRange(2, 8, 16, 16),)
    with pytest.raises(PipelineOptionError, match=r"range '224..96' that is not MIN..MAX or MIN..OPT..MAX"):
        parse_input_override("obs:Bx3x224..96x8")
    with pytest.raises(PipelineOptionError, match=r"the batch axis takes its range from `batch`"):
        parse_input_override("obs:1..8x3x8x8")


def test_dynamic_spatial_axes_convert_with_a_range_and_serve_inside_it(tmp_path: Path) -> None:
    """A range given for one input covers the other input that shares its axis names (H, W); validation ran
    at the profile's MIN, OPT and MAX shapes; the service answers at two shapes inside the range, matching
    ONNX Runtime on the original file, and refuses one outside it in one sentence."""
    path = _spatial_model(tmp_path)
    with pytest.raises(InputError, match=r"Input 'obs' has a dynamic axis 2 \('H'\) with no size range"):
        load_model(path)
    result = convert(path, tmp_path / "b", ConvertOptions(inputs=("obs:Bx3x32..48..64x32..64",)))
    raw = json.loads((result.bundle.path / "bundle.json").read_text())
    assert raw["schema_version"] == 2
    assert raw["inputs"][1]["ranges"] == {
        "2": {"min": 32, "opt": 48, "max": 64},
        "3": {"min": 32, "opt": 64, "max": 64},
    }
    m = ModelBundle.load(result.bundle.path).manifest
    assert m.shape_ranges()["obs"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 48, 64], "max": [8, 3, 64, 64]}
    assert result.validation["fp32"]["shapes"]["mask"]["max"] == [8, 1, 64, 64]
    assert result.validation["fp32"]["batches"] == [1, 1, 8]  # one run per profile point

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    with ServiceProcess(
        result.bundle.path, tmp_path / "cache", "onnxruntime", [], env=ENV, merge_output=True
    ) as svc:
        svc.wait_ready(timeout_s=90)
        for batch, h, w in ((1, 32, 40), (3, 64, 56)):
            feeds = {
                "obs": rng.standard_normal((batch, 3, h, w)).astype(np.float32),
                "mask": rng.random((batch, 1, h, w)).astype(np.float32),
            }
            (want,) = session.run(["feat"], feeds)
            np.testing.assert_allclose(_infer(svc.url, feeds)["feat"], want, atol=1e-5, rtol=1e-4)
        outside = {"obs": np.zeros((1, 3, 80, 40), np.float32), "mask": np.zeros((1, 1, 80, 40), np.float32)}
        with pytest.raises(urllib.error.HTTPError) as err:
            _infer(svc.url, outside)
        assert err.value.code == 400
        body = json.loads(err.value.read())
    assert "Input 'obs' has size 80 on axis 2, outside the model's range 32..64 for that axis." in json.dumps(
        body
    )


def test_range_errors_are_one_sentence(tmp_path: Path) -> None:
    path = _spatial_model(tmp_path)
    with pytest.raises(
        InputError, match=r"share dynamic axis 'H' but are given different ranges \(32..64 and 16..64\)"
    ):
        load_model(path, ["obs:Bx3x32..64x32..64", "mask:Bx1x16..64x32..64"])
    with pytest.raises(InputError, match=r"gives axis 2 a range, but the ONNX model fixes that axis to 7"):
        load_model(ONNX_DATA / "pytorch-converted" / "test_Conv2d" / "model.onnx", ["0:Bx3x5..10x5"])


def test_python_api_takes_shape_ranges_as_min_opt_max_shapes(tmp_path: Path) -> None:
    path = _spatial_model(tmp_path)
    conversion = convert_to_tensorrt(
        path,
        tmp_path / "spatial.engine",
        precision="fp16",
        max_batch_size=4,
        bundle_dir=tmp_path / "b",
        shape_ranges={"obs": [(1, 3, 32, 32), (1, 3, 48, 48), (4, 3, 64, 64)]},
    )
    assert conversion.bundle.manifest.shape_ranges()["mask"] == {
        "min": [1, 1, 32, 32],
        "opt": [1, 1, 48, 48],
        "max": [4, 1, 64, 64],
    }


class DictPolicy(torch.nn.Module):
    """A policy whose forward takes a dict observation and returns a dict of several outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 + 6, 5)

    def forward(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feat = self.conv(obs["image"]).mean(dim=(2, 3))
        h = self.fc(torch.cat([feat, obs["state"]], dim=1))
        return {"action": torch.tanh(h[:, :4]), "value": h[:, 4:]}


class TuplePolicy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = pair
        return self.fc(a + b), (a * b).sum(dim=1, keepdim=True)


class Untraceable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor([len(str(v)) for v in x.flatten().tolist()], dtype=torch.float32)


def test_dict_inputs_and_several_named_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(DictPolicy().eval(), tmp_path / "dict_policy.pt")
    result = convert(
        tmp_path / "dict_policy.pt",
        tmp_path / "b",
        ConvertOptions(inputs=("obs.image:Bx3x16x16", "obs.state:Bx6")),
    )
    m = result.bundle.manifest
    assert [s.name for s in m.inputs] == ["obs.image", "obs.state"]
    assert [o.name for o in m.outputs] == ["action", "value"]
    assert result.validation["fp32"]["reference"] == "pytorch" and result.validation["fp32"]["passed"]


def test_dict_input_with_a_ranged_axis_through_the_dynamo_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forward(*flat) around a dict input: torch.export gets the ranged axes as Dims of the one varargs
    parameter; validation against PyTorch ran at MIN/OPT/MAX."""
    real_export = torch.onnx.export

    def legacy_fails(*args: object, **kwargs: object) -> object:
        if not kwargs.get("dynamo", True):
            raise RuntimeError("legacy exporter cannot trace this module")
        return real_export(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    torch.manual_seed(0)
    torch.save(DictPolicy().eval(), tmp_path / "dict_policy.pt")
    result = convert(
        tmp_path / "dict_policy.pt",
        tmp_path / "b",
        ConvertOptions(inputs=("obs.image:Bx3x8..16x8..12..16", "obs.state:Bx6")),
    )
    m = result.bundle.manifest
    assert m.source["exporter"] == "dynamo" and result.validation["fp32"]["passed"]
    assert m.shape_ranges() == {
        "obs.image": {"min": [1, 3, 8, 8], "opt": [1, 3, 16, 12], "max": [8, 3, 16, 16]}
    }


def test_tuple_input_and_tuple_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TuplePolicy().eval(), tmp_path / "tuple_policy.pt")
    result = convert(
        tmp_path / "tuple_policy.pt", tmp_path / "b", ConvertOptions(inputs=("pair.0:Bx8", "pair.1:Bx8"))
    )
    assert [s.name for s in result.bundle.inputs] == ["pair.0", "pair.1"]
    assert len(result.bundle.outputs) == 2 and result.validation["fp32"]["passed"]


def test_untraceable_model_ends_in_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(Untraceable(), tmp_path / "untraceable.pt")
    code, _out, err = run_cli(
        capsys, "convert", tmp_path / "untraceable.pt", "-o", tmp_path / "b", "--input", "x:Bx4"
    )
    assert code != 0 and "Traceback" not in err
    assert "error: untraceable.pt is not traceable for ONNX export" in err, err
