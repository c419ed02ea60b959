from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions, get_backend
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import BackendUnavailable, EdgeError, EngineBuildError
from tests.runtime.conftest import sample_feeds
from tests.support import requires_tensorrt, tensorrt_importable


def test_onnxruntime_engine_matches_direct_session(tiny_bundle: Path) -> None:
    import onnxruntime as ort

    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch, intra_op_threads=1, inter_op_threads=1)
    engine = backend.load(backend.build(bundle, options), bundle, options)
    feeds = sample_feeds(4)
    expected = ort.InferenceSession(str(bundle.model_path)).run(["action"], feeds)[0]
    np.testing.assert_allclose(engine.infer(feeds)["action"], expected, rtol=1e-5, atol=1e-5)
    engine.close()


@pytest.mark.parametrize("spin", [False, True])
def test_onnxruntime_spin_wait_reaches_the_session(tiny_bundle: Path, spin: bool) -> None:
    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch, spin_wait=spin)
    engine = backend.load(backend.build(bundle, options), bundle, options)
    session_options = engine.session.get_session_options()  # type: ignore[attr-defined]
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
    engine.close()


def test_onnxruntime_rejects_garbage_engine(tiny_bundle: Path) -> None:
    bundle = ModelBundle.load(tiny_bundle)
    with pytest.raises(EngineBuildError, match="could not load"):
        get_backend("onnxruntime").load(b"garbage", bundle, BuildOptions())


def test_auto_picks_what_runs_here() -> None:
    backend = get_backend("auto")
    assert backend.name == ("tensorrt" if tensorrt_importable() else "onnxruntime")
    with pytest.raises(EdgeError, match="Unknown backend"):
        get_backend("openvino")


@pytest.mark.skipif(tensorrt_importable(), reason="checks the message where TensorRT is absent")
def test_tensorrt_absent_is_one_clear_sentence() -> None:
    with pytest.raises(BackendUnavailable) as err:
        get_backend("tensorrt")
    assert "TensorRT" in str(err.value) and "\n" not in str(err.value)


def test_tensorrt_module_imports_without_tensorrt() -> None:
    from edge_runtime.backends.tensorrt import TensorRTBackend

    assert TensorRTBackend.engine_suffix == ".plan"


@requires_tensorrt
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_onnxruntime(tiny_bundle: Path, tmp_path: Path, precision: str) -> None:
    """Not exercised on our machines (no TensorRT); runs on a Jetson or a GPU host with TensorRT."""
    import onnxruntime as ort

    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("tensorrt")
    options = BuildOptions(
        precision=precision,
        batch=bundle.manifest.batch,
        timing_cache=tmp_path / "t.cache",
        workspace_bytes=256 << 20,
    )
    engine = backend.load(backend.build(bundle, options), bundle, options)
    feeds = sample_feeds(2)
    expected = ort.InferenceSession(str(bundle.model_path)).run(["action"], feeds)[0]
    tol = 1e-3 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(engine.infer(feeds)["action"], expected, rtol=tol, atol=tol)
    assert (tmp_path / "t.cache").stat().st_size > 0
    engine.close()


def test_tensorrt_source_model_per_bundle_kind(tmp_path: Path) -> None:
    """Which file TensorRT parses: runs here, since it only reads the bundle (no TensorRT import)."""
    import dataclasses

    from edge_runtime.backends.tensorrt import source_model
    from tests.runtime.conftest import write_tiny_bundle

    bundle = ModelBundle.load(write_tiny_bundle(tmp_path / "b"))
    (bundle.path / "model.fp32.onnx").write_bytes(bundle.model_path.read_bytes())

    def with_quant(q: dict | None) -> ModelBundle:
        return ModelBundle(bundle.path, dataclasses.replace(bundle.manifest, quantization=q))

    assert source_model(bundle, "fp32") == (bundle.model_path, False)
    assert source_model(with_quant({"format": "QDQ", "fp32_model": "model.fp32.onnx"}), "int8") == (
        bundle.model_path,
        True,
    )
    assert source_model(with_quant({"fp32_model": "model.fp32.onnx"}), "fp16") == (
        bundle.path / "model.fp32.onnx",
        False,
    )
    assert source_model(with_quant({"fp32_model": "model.fp32.onnx"}), "int8") == (
        bundle.path / "model.fp32.onnx",
        False,
    )
