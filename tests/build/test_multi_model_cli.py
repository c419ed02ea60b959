"""The CLI's forms of several models (``--model NAME=PATH`` repeated, ``--models FILE``, ``--pipelines``):
each wrong combination ends in one sentence and a non-zero exit before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.build.cli_helpers import run_cli


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for name in ("det.onnx", "policy.pt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "models.yaml").write_text("models:\n  - {name: det, path: det.onnx}\n")
    (tmp_path / "pipelines.json").write_text('{"version": 1, "pipelines": []}')
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code", "sentence"),
    [
        (["image", "build"], 2, "Give MODEL, or several models with --model NAME=PATH or --models FILE."),
        (["image", "build", "{d}/policy.pt", "--model", "det={d}/det.onnx"], 2, "Give MODEL, or several"),
        (["image", "build", "--model", "Det={d}/det.onnx"], 2, "Model name 'Det' is not allowed"),
        (["image", "build", "--model", "det={d}/none.onnx"], 2, "Model 'det': {d}/none.onnx does not exist."),
        (
            ["image", "build", "--model", "det={d}/det.onnx", "--models", "{d}/models.yaml"],
            2,
            "with --model NAME=PATH or with --models FILE, not both",
        ),
        (
            ["image", "build", "{d}/policy.pt", "--pipelines", "{d}/pipelines.json"],
            2,
            "--pipelines needs several",
        ),
        (
            ["image", "build", "--model", "a={d}/det.onnx", "--model", "a={d}/policy.pt"],
            2,
            "Model name 'a' is given twice",
        ),
        (
            [
                "release",
                "create",
                "1.0.0",
                "--no-sign",
                "--model",
                "a={d}/det.onnx",
                "--model",
                "{d}/policy.pt",
            ],
            2,
            "--model takes one PATH, or NAME=PATH for each of several models, not both.",
        ),
        (
            [
                "release",
                "create",
                "1.0.0",
                "--no-sign",
                "--model",
                "{d}/det.onnx",
                "--model",
                "{d}/policy.pt",
            ],
            2,
            "Several models need a name each: --model NAME=PATH.",
        ),
    ],
)
def test_wrong_model_forms_end_in_one_sentence(
    capsys: pytest.CaptureFixture[str], models: Path, args: list[str], code: int, sentence: str
) -> None:
    got, out, err = run_cli(capsys, *[a.format(d=models) for a in args])
    assert got == code, (out, err)
    assert sentence.format(d=models) in err
    assert "Traceback" not in err


def test_convert_models_writes_a_model_repository(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`convert --models`: each model with its own settings into OUTPUT/<name>/ (a prebuilt bundle copied),
    the pipelines file checked against the converted models and copied beside them."""
    import json

    import numpy as np

    from edge_runtime.bundle import ModelBundle
    from edge_runtime.repository import discover
    from tests.build.multi_models import write_detector
    from tests.runtime.bundles import ACTION_DIM, STATE_DIM, write_linear_bundle

    write_detector(tmp_path / "detector.onnx")
    write_linear_bundle(
        tmp_path / "policy-bundle", np.ones((3 + STATE_DIM, ACTION_DIM)), np.zeros(ACTION_DIM)
    )
    steps = [{"model": "detector"}, {"model": "policy", "inputs": {"robot_state": "detector.detections"}}]
    (tmp_path / "pipelines.json").write_text(
        json.dumps({"version": 1, "pipelines": [{"name": "act", "steps": steps}]})
    )
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  - {name: detector, path: detector.onnx, precision: fp32, batch: '1,1,4'}\n"
        "  - {name: policy, path: policy-bundle}\n"
        "pipelines: pipelines.json\n"
    )
    out = tmp_path / "repo"
    code, stdout, err = run_cli(
        capsys, "convert", "--models", str(tmp_path / "models.yaml"), "-o", str(out), "--json"
    )
    assert code == 0, err
    rows = json.loads(stdout)
    assert {n: r["precision"] for n, r in rows.items()} == {"detector": "fp32", "policy": "fp32"}
    assert set(discover(out)) == {"detector", "policy"}
    assert json.loads((out / "pipelines.json").read_text())["pipelines"][0]["name"] == "act"
    assert str(ModelBundle.load(out / "detector").manifest.batch) == "1,1,4"
    # a pipeline that reads an output the detector does not give is refused, naming it
    bad = [{"model": "detector"}, {"model": "policy", "inputs": {"robot_state": "detector.boxes"}}]
    (tmp_path / "pipelines.json").write_text(
        json.dumps({"version": 1, "pipelines": [{"name": "act", "steps": bad}]})
    )
    code, _, err = run_cli(
        capsys, "convert", "--models", str(tmp_path / "models.yaml"), "-o", str(out), "--force"
    )
    assert code != 0 and "reads output 'boxes' of 'detector', which gives detections" in err, err
    assert "Traceback" not in err
