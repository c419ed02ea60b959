"""Every bad input ends in one ``error:`` sentence, a non-zero exit, no traceback and nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edge_deploy.model.sample import build_policy
from tests.build.cli_helpers import run_cli


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "text": d / "notes.pt",
        "corrupt_onnx": d / "broken.onnx",
        "state_dict": d / "weights.pt",
        "small_calib": d / "small.npz",
        "partial_calib": d / "partial.npz",
        "not_npz": d / "calib.npz",
    }
    files["text"].write_text("this is not a model\n")
    files["corrupt_onnx"].write_bytes(b"\x08\x07garbage" * 50)
    torch.save(build_policy().state_dict(), files["state_dict"])
    np.savez(
        files["small_calib"],
        image=np.zeros((2, 3, 64, 64), np.float32),
        robot_state=np.zeros((2, 48), np.float32),
    )
    np.savez(files["partial_calib"], image=np.zeros((2, 3, 224, 224), np.float32))
    files["not_npz"].write_text("1,2,3\n")
    return files


CASES = {
    "missing model": (["convert", "{missing}"], "does not exist"),
    "model is a directory": (["convert", "{dir}"], "is a directory"),
    "not a model": (["convert", "{text}"], "is not a model"),
    "state_dict only": (["convert", "{state_dict}"], "holds a state_dict"),
    "corrupt onnx": (["convert", "{corrupt_onnx}"], "is not a valid ONNX model"),
    "unknown input name": (["convert", "{policy}", "--input", "joints:Bx6"], "does not name a model input"),
    "wrong input shape": (["convert", "{policy}", "--input", "image:Bx3x64"], "does not accept inputs"),
    "bad override syntax": (["convert", "{policy}", "--input", "image"], "NAME:SHAPE"),
    "unknown precision": (["convert", "{policy}", "--precision", "int4"], "int4"),
    "int8 without calibration": (
        ["convert", "{policy}", "--precision", "int8"],
        "INT8 needs calibration data: pass --calibration, an .npz file",
    ),
    "calibration wrong shape": (
        ["convert", "{policy}", "--precision", "int8", "--calibration", "{small_calib}"],
        "has shape [2, 3, 64, 64], expected [N, 3, 224, 224]",
    ),
    "calibration missing array": (
        ["convert", "{policy}", "--precision", "int8", "--calibration", "{partial_calib}"],
        "has no array 'robot_state'",
    ),
    "calibration not npz": (
        ["convert", "{policy}", "--precision", "int8", "--calibration", "{not_npz}"],
        "not a readable .npz",
    ),
    "opset too old": (["convert", "{policy}", "--opset", "13"], "Opset 13 is too old"),
    "bad batch profile": (["convert", "{policy}", "--batch", "8,1,1"], "MIN ≤ OPT ≤ MAX"),
    "output not writable": (["convert", "{policy}", "-o", "/proc/edge-bundle"], "not writable"),
    "output under a file": (["convert", "{policy}", "-o", "{text}/bundle"], "not a directory"),
    "output not empty": (["convert", "{policy}", "-o", "{dir}"], "is not empty; pass --force to replace it"),
    "bench missing bundle": (["bench", "{missing}"], "does not exist"),
    "bench tampered bundle": (["bench", "{tampered}"], "Bundle file model.onnx does not match"),
    "bench bundle missing file": (["bench", "{gutted}"], "Bundle file calibration.cache is missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(
    case: str,
    tmp_path: Path,
    bad_files: dict[str, Path],
    sample_files: tuple[Path, Path],
    make_bundle: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, expected = CASES[case]
    int8 = make_bundle("int8").bundle.path
    tampered, gutted = tmp_path / "tampered", tmp_path / "gutted"
    shutil.copytree(int8, tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-1] + b"\x01")
    shutil.copytree(int8, gutted)
    (gutted / "calibration.cache").unlink()
    names = {k: str(v) for k, v in bad_files.items()}
    names.update(
        missing=str(tmp_path / "nope.pt"),
        dir=str(tmp_path),
        policy=str(sample_files[0]),
        tampered=str(tampered),
        gutted=str(gutted),
    )
    argv = [a.format(**names) for a in args]
    out_dir = tmp_path / "out-bundle"
    if argv[0] == "convert" and "-o" not in argv:
        argv += ["-o", str(out_dir)]
    rc, out, err = run_cli(capsys, *argv)
    assert rc != 0
    assert "Traceback" not in err + out
    assert expected in err, err
    if "Usage:" not in err:
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and lines[0].endswith("."), err
    assert not out_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
