from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions, get_backend
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import BackendUnavailable, EdgeError, EngineBuildError
from tests.runtime.conftest import sample_feeds
from tests.runtime.trt_fakes import FakeBuilderConfig
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
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == (
        "1" if spin else "0"
    )
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


def _bundle_kind(tmp_path: Path, quantization: dict | None) -> ModelBundle:
    """The tiny bundle with another quantization record and a model.fp32.onnx beside model.onnx."""
    import dataclasses

    from tests.runtime.conftest import write_tiny_bundle

    bundle = ModelBundle.load(write_tiny_bundle(tmp_path / "b"))
    (bundle.path / "model.fp32.onnx").write_bytes(bundle.model_path.read_bytes())
    return ModelBundle(bundle.path, dataclasses.replace(bundle.manifest, quantization=quantization))


FP16_GRAPH = {"format": "fp16 ONNX (float32 inputs/outputs)", "fp32_model": "model.fp32.onnx"}
FP16_FLAG = {"format": "fp32 ONNX; the device engine is built with the FP16 flag"}
QDQ = {"format": "QDQ", "fp32_model": "model.fp32.onnx"}
IMPLICIT = None  # an INT8 bundle without Q/DQ: TensorRT's entropy calibrator sets the scales

# (bundle quantization, precision, TensorRT) → (file parsed, strongly typed, flags, calibrator)
RECIPES = [
    (None, "fp32", "10.3.0", ("model.onnx", False, (), False)),
    (None, "fp32", "10.13.3.9", ("model.onnx", True, (), False)),
    (None, "fp32", "11.4.0.106", ("model.onnx", True, (), False)),
    (FP16_GRAPH, "fp16", "8.5.2", ("model.fp32.onnx", False, ("FP16",), False)),
    (FP16_GRAPH, "fp16", "10.3.0", ("model.fp32.onnx", False, ("FP16",), False)),
    (FP16_GRAPH, "fp16", "10.13.3.9", ("model.onnx", True, (), False)),
    (FP16_GRAPH, "fp16", "11.4.0.106", ("model.onnx", True, (), False)),
    (FP16_GRAPH, "fp32", "11.4.0.106", ("model.fp32.onnx", True, (), False)),
    (FP16_FLAG, "fp16", "10.3.0", ("model.onnx", False, ("FP16",), False)),
    (FP16_FLAG, "fp16", "10.13.3.9", ("model.onnx", False, ("FP16",), False)),
    (QDQ, "int8", "10.3.0", ("model.onnx", False, ("FP16", "INT8"), False)),
    (QDQ, "int8", "10.13.3.9", ("model.onnx", True, (), False)),
    (QDQ, "int8", "11.4.0.106", ("model.onnx", True, (), False)),
    (IMPLICIT, "int8", "10.3.0", ("model.onnx", False, ("FP16", "INT8"), True)),
    (IMPLICIT, "int8", "10.13.3.9", ("model.onnx", False, ("FP16", "INT8"), True)),
]


@pytest.mark.parametrize(("quantization", "precision", "version", "expected"), RECIPES)
def test_tensorrt_recipe_per_version_and_bundle_kind(
    tmp_path: Path, quantization: dict | None, precision: str, version: str, expected: tuple
) -> None:
    """Which file TensorRT parses and how, per TensorRT version (no TensorRT needed: plan_build is pure)."""
    from edge_runtime.backends.trt_recipe import plan_build

    recipe = plan_build(_bundle_kind(tmp_path, quantization), precision, version)
    assert (recipe.source.name, recipe.strongly_typed, recipe.flags, recipe.calibrate) == expected


@pytest.mark.parametrize(
    ("quantization", "precision", "refusal"),
    [
        (IMPLICIT, "int8", r"TensorRT 11\.4\.0\.106 has no implicit INT8 calibration.*Q/DQ"),
        (FP16_FLAG, "fp16", r"TensorRT 11\.4\.0\.106 builds precision from the ONNX graph.*no FP16 graph"),
        (QDQ, "fp16", r"TensorRT 11\.4\.0\.106 builds precision from the ONNX graph"),
    ],
)
def test_tensorrt_11_refuses_what_only_builder_flags_could_build(
    tmp_path: Path, quantization: dict | None, precision: str, refusal: str
) -> None:
    from edge_runtime.backends.trt_recipe import plan_build

    with pytest.raises(EngineBuildError, match=refusal) as err:
        plan_build(_bundle_kind(tmp_path, quantization), precision, "11.4.0.106")
    assert "\n" not in str(err.value)


def test_tensorrt_fp32_needs_an_fp32_graph(tmp_path: Path) -> None:
    import dataclasses

    from edge_runtime.backends.trt_recipe import plan_build

    bundle = _bundle_kind(tmp_path, {"format": "QDQ"})  # no fp32_model recorded
    with pytest.raises(EngineBuildError, match="FP32 ONNX"):
        plan_build(bundle, "fp32", "10.3.0")
    named = ModelBundle(bundle.path, dataclasses.replace(bundle.manifest, quantization=QDQ))
    assert plan_build(named, "fp32", "10.3.0").source.name == "model.fp32.onnx"


# -- the TensorRT backend's CUDA plumbing, on the host-memory stand-in for cuda-python ---------------------
class CopyKernel:
    """An enqueue callable standing for TensorRT: one 'kernel' copying the input buffer to the output buffer."""

    def __init__(self, cudart: object, runner: object) -> None:
        self.cudart, self.runner = cudart, runner
        self.src = self.dst = self.nbytes = 0
        self.calls = 0
        self.fail_on: set[int] = set()  # call numbers (1-based) that return False

    def __call__(self, stream: int) -> bool:
        self.calls += 1
        self.cudart.calls.append(("enqueue", self.calls))  # type: ignore[attr-defined]
        if self.calls in self.fail_on:
            return False
        src, dst, n = self.src, self.dst, self.nbytes  # the addresses a capture freezes
        import ctypes

        self.cudart.launch(stream, lambda: ctypes.memmove(dst, src, n))  # type: ignore[attr-defined]
        return True


def _run(runner, kernel: CopyKernel, data: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What TensorRTEngine.infer does around the enqueue: size buffers, copy in, execute, copy out."""
    out = np.empty_like(data)
    kernel.src, kernel.dst = runner.buffer("in", data.nbytes), runner.buffer("out", out.nbytes)
    kernel.nbytes = data.nbytes
    runner.upload(kernel.src, data)
    runner.execute(kernel, (data.shape,))
    runner.download(out, kernel.dst)
    runner.synchronize()
    return out


def _runner(cuda_graph: bool, **fail: object):  # type: ignore[no-untyped-def]
    from edge_runtime.backends.trt_cuda import CudaStreamRunner
    from tests.runtime.host_cudart import HostCudart

    cudart = HostCudart(fail=fail)  # type: ignore[arg-type]
    runner = CudaStreamRunner(cudart, cuda_graph=cuda_graph)
    return cudart, runner, CopyKernel(cudart, runner)


def test_cuda_runner_plain_enqueue_moves_the_bytes() -> None:
    cudart, runner, kernel = _runner(cuda_graph=False)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(_run(runner, kernel, data), data)
    assert "cudaStreamBeginCapture" not in cudart.names()
    kernel.fail_on.add(2)
    with pytest.raises(EdgeError, match="could not enqueue"):
        _run(runner, kernel, data)
    runner.close()
    assert cudart.memory == {}  # every buffer freed


def test_cuda_graph_is_captured_the_trtexec_way_and_replayed_for_the_same_shapes() -> None:
    cudart, runner, kernel = _runner(cuda_graph=True)
    first = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(_run(runner, kernel, first), first)
    names = cudart.names()
    # checked warm-up enqueue, synchronize, capture (thread-local) of a second enqueue, end, instantiate
    i = names.index("cudaStreamBeginCapture")
    assert names[:i].count("enqueue") == 1 and "cudaStreamSynchronize" in names[names.index("enqueue") : i]
    assert cudart.calls[i][1] == cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    assert names[i:].index("cudaStreamEndCapture") < names[i:].index("cudaGraphInstantiate")
    assert runner.captures == 1

    cudart.calls.clear()
    second = first * 10  # same shapes, new data: replayed, no enqueue through TensorRT
    np.testing.assert_array_equal(_run(runner, kernel, second), second)
    assert "cudaGraphLaunch" in cudart.names() and "enqueue" not in cudart.names()

    cudart.calls.clear()
    other = np.arange(
        4, dtype=np.float32
    )  # new shapes (smaller: buffers stay): the old graph is not replayed
    np.testing.assert_array_equal(_run(runner, kernel, other), other)
    assert "cudaGraphExecDestroy" in cudart.names() and "cudaGraphLaunch" not in cudart.names()
    assert runner.captures == 2
    runner.close()
    assert cudart.graphs_alive == 0 and cudart.memory == {}


def test_cuda_graph_buffer_growth_drops_the_graph_holding_old_addresses() -> None:
    cudart, runner, kernel = _runner(cuda_graph=True)
    _run(runner, kernel, np.ones(4, dtype=np.float32))
    cudart.calls.clear()
    big = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(_run(runner, kernel, big), big)
    assert cudart.names().index("cudaGraphExecDestroy") < cudart.names().index("cudaMalloc")
    runner.close()
    assert cudart.graphs_alive == 0


def test_cuda_graph_capture_failure_ends_the_capture_and_falls_back_to_plain_enqueues() -> None:
    cudart, runner, kernel = _runner(cuda_graph=True)
    kernel.fail_on.add(2)  # the enqueue inside the capture
    data = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(_run(runner, kernel, data), data)  # the warm-up's outputs stand
    names = cudart.names()
    assert "cudaStreamEndCapture" in names and "cudaGraphInstantiate" not in names
    assert "cudaGetLastError" in names and runner.captures == 0 and cudart.capturing == {}
    cudart.calls.clear()
    np.testing.assert_array_equal(_run(runner, kernel, data + 1), data + 1)
    assert "cudaStreamBeginCapture" not in cudart.names() and cudart.names().count("enqueue") == 1
    runner.close()
    assert cudart.graphs_alive == 0


def test_cuda_graph_invalidated_capture_falls_back() -> None:
    cudart, runner, kernel = _runner(cuda_graph=True)
    cudart.invalidate_capture = True
    data = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(_run(runner, kernel, data), data)
    assert runner.captures == 0 and cudart.graphs_alive == 0


def test_cuda_graph_failed_warm_up_is_an_error_not_a_capture() -> None:
    cudart, runner, kernel = _runner(cuda_graph=True)
    kernel.fail_on.add(1)
    with pytest.raises(EdgeError, match="could not enqueue"):
        _run(runner, kernel, np.ones(3, dtype=np.float32))
    assert "cudaStreamBeginCapture" not in cudart.names()


def test_cuda_stream_creation_failure_is_transient() -> None:
    from edge_runtime.errors import EngineLoadTransient
    from tests.runtime.host_cudart import cudaError_t

    with pytest.raises(EngineLoadTransient, match=r"cudaStreamCreate failed \(cudaErrorMemoryAllocation\)"):
        _runner(cuda_graph=False, cudaStreamCreate=cudaError_t.cudaErrorMemoryAllocation)


# -- the shared timing cache, with a config standing in for TensorRT's (same calls, JSON instead of its format)
def _entries(path: Path) -> set[str]:
    import json

    return set(json.loads(path.read_text()))


def test_timing_cache_save_merges_what_is_on_disk(tmp_path: Path) -> None:
    from edge_runtime.backends.tensorrt import _save_timing_cache

    path = tmp_path / "timing" / "10.3.0-Orin.cache"
    path.parent.mkdir()
    path.write_text('["other-model-tactic"]')
    _save_timing_cache(FakeBuilderConfig({"this-model-tactic"}), path)  # type: ignore[arg-type]
    assert _entries(path) == {"other-model-tactic", "this-model-tactic"}


def test_timing_cache_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    import threading

    from edge_runtime.backends.tensorrt import _save_timing_cache

    path = tmp_path / "t.cache"
    configs = [FakeBuilderConfig({f"tactic-{i}"}, combine_delay=0.2) for i in range(3)]
    path.write_text("[]")
    threads = [threading.Thread(target=_save_timing_cache, args=(c, path)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _entries(path) == {"tactic-0", "tactic-1", "tactic-2"}


def test_corrupt_timing_cache_falls_back_to_an_empty_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_runtime.backends.tensorrt import _attach_timing_cache, _save_timing_cache

    path = tmp_path / "t.cache"
    path.write_bytes(b"\x00garbage from a crashed writer")
    config = FakeBuilderConfig({"fresh"})
    attached = _attach_timing_cache(config, path)  # type: ignore[arg-type]
    assert attached is not None and attached.entries == set() and config.attached is attached
    assert "unusable" in caplog.text
    _save_timing_cache(config, path)  # type: ignore[arg-type]
    assert _entries(path) == {"fresh"}


def test_no_timing_cache_yet_attaches_an_empty_one(tmp_path: Path) -> None:
    from edge_runtime.backends.tensorrt import _attach_timing_cache

    config = FakeBuilderConfig({"fresh"})
    attached = _attach_timing_cache(config, tmp_path / "absent.cache")  # type: ignore[arg-type]
    assert attached is not None and attached.entries == set() and config.attached is attached


def test_timing_cache_save_failure_never_fails_the_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_runtime.backends.tensorrt import _save_timing_cache

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    _save_timing_cache(FakeBuilderConfig({"t"}), blocker / "t.cache")  # type: ignore[arg-type]
    assert "could not save the TensorRT timing cache" in caplog.text
