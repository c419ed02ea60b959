"""Several models in one runtime image, without Docker: model specs, models.yaml, pipelines checks, the
generated bake file and stage (one COPY --link layer per model), and bake reading it after its own file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_deploy.images.files import tool_files
from edge_deploy.images.models import (
    ModelSet,
    ModelSpec,
    check_pipelines,
    is_named_model,
    load_models_file,
    models_bake_file,
    models_digest,
    models_dockerfile,
    models_from_options,
    models_label,
    parse_model_option,
)
from edge_deploy.images.result import ImageError
from tests.support import need

SHA = "ab" * 32


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    det, pol, cal = tmp_path / "det.onnx", tmp_path / "policy.pt", tmp_path / "calib.npz"
    for p in (det, pol, cal):
        p.write_bytes(b"x")
    return det, pol, cal


def test_model_option_forms(tmp_path: Path) -> None:
    assert parse_model_option("policy=models/p.pt") == ("policy", Path("models/p.pt"))
    assert is_named_model("det_1=a.onnx") and not is_named_model("policy.pt")
    assert not is_named_model("dir/a=b.pt")  # a path that holds "=" is the single-model form
    with pytest.raises(ImageError, match=r"is not NAME=PATH"):
        parse_model_option("policy=")
    with pytest.raises(ImageError, match=r"Model name 'Policy' is not allowed"):
        parse_model_option("Policy=p.pt")


def test_models_from_options_give_calibration_to_the_models_beside_it(tmp_path: Path) -> None:
    det, pol, cal = _files(tmp_path)
    other = tmp_path / "sub"
    other.mkdir()
    (other / "x.pt").write_bytes(b"x")
    specs = models_from_options(
        [f"policy={pol}", f"detector={det}", f"x={other / 'x.pt'}"], precision="int8", calibration=cal
    )
    assert [(s.name, s.precision, s.calibration) for s in specs] == [
        ("policy", "int8", cal),
        ("detector", "int8", cal),
        ("x", "int8", None),
    ]


def test_model_spec_refusals(tmp_path: Path) -> None:
    det, _, _ = _files(tmp_path)
    with pytest.raises(ImageError, match=r"Model 'd': .*missing\.onnx does not exist\."):
        ModelSpec("d", tmp_path / "missing.onnx")
    with pytest.raises(ImageError, match=r"has precision 'fp8'"):
        ModelSpec("d", det, precision="fp8")
    with pytest.raises(ImageError, match=r"Batch profile '1,8' is not"):
        ModelSpec("d", det, batch="1,8")
    with pytest.raises(ImageError, match=r"has input 'image;rm'"):
        ModelSpec("d", det, inputs=("image;rm",))
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    (elsewhere / "c.npz").write_bytes(b"x")
    with pytest.raises(ImageError, match=r"must be in the model's directory"):
        ModelSpec("d", det, calibration=elsewhere / "c.npz")
    with pytest.raises(ImageError, match=r"Model name 'd' is given twice"):
        ModelSet((ModelSpec("d", det), ModelSpec("d", det)))


def test_models_yaml_reads_per_model_settings(tmp_path: Path) -> None:
    det, pol, cal = _files(tmp_path)
    (tmp_path / "pipelines.json").write_text(
        json.dumps({"version": 1, "pipelines": [{"name": "act", "steps": [{"model": "detector"}]}]})
    )
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  - {name: policy, path: policy.pt, precision: int8, calibration: calib.npz}\n"
        "  - {name: detector, path: det.onnx, precision: fp32, batch: '1,2,4', inputs: ['image:Bx3x96x96']}\n"
        "pipelines: pipelines.json\n"
    )
    ms = load_models_file(tmp_path / "models.yaml")
    assert ms.names == ["detector", "policy"]  # sorted: layer order and the runtime's default model
    d, p = ms.models
    assert (d.path, d.precision, d.batch, d.inputs) == (det, "fp32", "1,2,4", ("image:Bx3x96x96",))
    assert (p.path, p.precision, p.calibration) == (pol, "int8", cal)
    assert ms.pipelines == tmp_path / "pipelines.json"
    assert d.args() == {
        "MODEL": "det.onnx",
        "PRECISION": "fp32",
        "CALIBRATION": "",
        "BATCH": "1,2,4",
        "INPUTS": "image:Bx3x96x96",
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("models: []\n", r"needs a non-empty 'models:' list"),
        ("models: [{name: a, path: det.onnx}]\nextra: 1\n", r"unknown key 'extra'"),
        ("models: [{name: a, path: det.onnx, dtype: x}]\n", r"model 1 has an unknown key 'dtype'"),
        ("models: [{name: a}]\n", r"model 1 needs 'path' as a string"),
        ("models: [{name: a, path: det.onnx, precision: 16}]\n", r"'precision' of type int"),
        ("models: [{name: a, path: det.onnx, inputs: image}]\n", r"'inputs' that is not a list"),
        ("models: [{name: A, path: det.onnx}]\n", r"Model name 'A' is not allowed"),
        ("models: [\n", r"is not valid YAML"),
    ],
)
def test_models_yaml_refusals(tmp_path: Path, text: str, match: str) -> None:
    _files(tmp_path)
    (tmp_path / "models.yaml").write_text(text)
    with pytest.raises(ImageError, match=match):
        load_models_file(tmp_path / "models.yaml")


def test_pipelines_checked_with_the_runtimes_reader(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"version": 1, "pipelines": [{"name": "act", "steps": [{"model": "nope"}]}]}))
    with pytest.raises(ImageError, match=r"pipeline 'act' uses model 'nope', which is not one of a, b"):
        check_pipelines(path, ["a", "b"])
    path.write_text(json.dumps({"pipelines": {}}))
    with pytest.raises(ImageError, match=r"pipelines must be a list"):
        check_pipelines(path, ["a"])
    with pytest.raises(ImageError, match=r"does not exist"):
        check_pipelines(tmp_path / "none.json", ["a"])


def test_generated_stage_puts_each_model_in_its_own_last_layer(tmp_path: Path) -> None:
    det, pol, _ = _files(tmp_path)
    pipes = tmp_path / "pipelines.json"
    pipes.write_text(json.dumps({"version": 1, "pipelines": []}))
    ms = ModelSet((ModelSpec("policy", pol), ModelSpec("detector", det, "fp32")), pipes)
    label = models_label(
        {"policy": {"precision": "fp16", "sha256": SHA}, "detector": {"precision": "fp32", "sha256": SHA}}
    )
    assert label == f"detector:fp32:{SHA},policy:fp16:{SHA}"
    text = models_dockerfile(ms, label).splitlines()
    assert text[1:] == [
        "FROM runtime-base AS models",
        "COPY --link --from=model-detector / /opt/edge/models/detector/",
        "COPY --link --from=model-policy / /opt/edge/models/policy/",
        "COPY --link --from=pipelines /pipelines.json /opt/edge/models/pipelines.json",
        f'LABEL io.edge-deploy.models="{label}"',
    ]
    doc = models_bake_file(ms, pipelines_dir=tmp_path / "staged", label=label)
    t = doc["target"]
    assert t["model-detector"] == {
        "inherits": ["bundle"],
        "contexts": {"model": str(tmp_path)},
        "args": {"MODEL": "det.onnx", "PRECISION": "fp32", "CALIBRATION": "", "BATCH": "1,1,8", "INPUTS": ""},
    }
    assert t["runtime"]["target"] == "models"
    assert t["runtime"]["contexts"] == {
        "runtime-base": "target:runtime-base",
        "model-detector": "target:model-detector",
        "model-policy": "target:model-policy",
        "pipelines": str(tmp_path / "staged"),
    }
    dated = models_bake_file(ms, pipelines_dir=tmp_path / "staged", epoch="1700000000")["target"]
    assert dated["runtime-base"] == {"args": {"SOURCE_DATE_EPOCH": "1700000000"}}
    assert dated["model-policy"]["args"]["SOURCE_DATE_EPOCH"] == "1700000000"
    assert "runtime-base" not in t and "SOURCE_DATE_EPOCH" not in t["model-policy"]["args"]
    with pytest.raises(ImageError, match=r"unexpected precision or sha256"):
        models_label({"a": {"precision": "fp16", "sha256": "x"}})
    assert models_digest({"a": SHA, "b": SHA}) == models_digest({"b": SHA, "a": SHA})
    assert models_digest({"a": SHA}) != models_digest({"b": SHA})


def test_bake_reads_the_generated_file_after_its_own(tmp_path: Path) -> None:
    """What bake itself makes of the generated file: `runtime` becomes the generated stage on
    `runtime-base` (tags, platforms and arguments kept), each model target the `bundle` target's convert
    stage with that model's arguments."""
    need(shutil.which("docker") is not None, "docker with buildx (scripts/host-setup)")
    det, pol, _ = _files(tmp_path)
    ms = ModelSet((ModelSpec("policy", pol), ModelSpec("detector", det, "fp32", inputs=("image:Bx3x96x96",))))
    generated = tmp_path / "models.bake.json"
    generated.write_text(json.dumps(models_bake_file(ms)))
    checkout = tool_files().checkout
    need(checkout is not None, "a checkout (the bake file)")
    assert checkout is not None
    proc = subprocess.run(
        [
            "docker",
            "buildx",
            "bake",
            "-f",
            "docker/docker-bake.hcl",
            "-f",
            str(generated),
            "--print",
            "runtime",
            "model-detector",
            "runtime-base",
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    targets = json.loads(proc.stdout)["target"]
    runtime = targets["runtime"]
    assert runtime["target"] == "models" and "COPY --link --from=model-policy" in runtime["dockerfile-inline"]
    assert runtime["contexts"]["model-policy"] == "target:model-policy"
    assert runtime["platforms"] == ["linux/arm64"] and runtime["tags"][0].endswith("/edge-deploy/runtime:dev")
    det_t = targets["model-detector"]
    assert det_t["target"] == "bundle" and det_t["contexts"]["model"] == str(tmp_path)
    assert (det_t["args"]["MODEL"], det_t["args"]["PRECISION"], det_t["args"]["INPUTS"]) == (
        "det.onnx",
        "fp32",
        "image:Bx3x96x96",
    )
    assert targets["runtime-base"]["target"] == "runtime-base"
