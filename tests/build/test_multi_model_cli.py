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
