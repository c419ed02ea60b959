"""The bundle is written atomically and refused on load when a file was tampered with or removed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.bundle.writer import BundleWriter
from edge_deploy.errors import OutputError
from edge_deploy.model import ConvertOptions, convert, quantize
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import BundleError


def test_failure_mid_run_leaves_nothing(
    tmp_path: Path, sample_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(quantize, "to_int8", boom)
    model, calib = sample_files
    with pytest.raises(RuntimeError):
        convert(model, tmp_path / "b", ConvertOptions(precision="int8", calibration=calib))
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_the_old_bundle(
    tmp_path: Path, make_bundle: Any, monkeypatch: pytest.MonkeyPatch, sample_files: tuple[Path, Path]
) -> None:
    target = tmp_path / "b"
    shutil.copytree(make_bundle("fp32").bundle.path, target)
    before = ModelBundle.load(target).sha256

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash")

    monkeypatch.setattr(quantize, "to_fp16", boom)
    with pytest.raises(RuntimeError):
        convert(sample_files[0], target, ConvertOptions(precision="fp16", force=True))
    assert ModelBundle.load(target).sha256 == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_writer_commit_hashes_every_file(tmp_path: Path, make_bundle: Any) -> None:
    manifest = make_bundle("fp32").bundle.manifest
    with BundleWriter(tmp_path / "w") as w:
        shutil.copy(make_bundle("fp32").bundle.model_path, w.path("model.onnx"))
        w.path("notes.txt").write_text("extra")
        bundle = w.commit(manifest)
    assert set(bundle.manifest.files) == {"model.onnx", "notes.txt"}
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


@pytest.mark.parametrize("victim", ["model.onnx", "calibration.cache", "calibration.npz"])
def test_tampered_file_is_refused_by_name(tmp_path: Path, make_bundle: Any, victim: str) -> None:
    target = tmp_path / "b"
    shutil.copytree(make_bundle("int8", embed_calibration=2).bundle.path, target)
    with (target / victim).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"Bundle file {victim} does not match"):
        ModelBundle.load(target)


def test_missing_file_is_refused_by_name(tmp_path: Path, make_bundle: Any) -> None:
    target = tmp_path / "b"
    shutil.copytree(make_bundle("int8").bundle.path, target)
    (target / "model.fp32.onnx").unlink()
    with pytest.raises(BundleError, match=r"Bundle file model\.fp32\.onnx is missing"):
        ModelBundle.load(target)


def test_unwritable_output_is_refused_before_work(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        convert(sample_files[0], blocker / "bundle")
    with pytest.raises(OutputError, match="not writable"):
        convert(sample_files[0], Path("/proc/edge-bundle"))
