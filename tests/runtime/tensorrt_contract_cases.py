"""The TensorRT backend against ONE version of TensorRT's REAL Python bindings (run by test_tensorrt_contract.py).

This file runs in its own process, with ``tensorrt`` = that version's real module (PyPI's bindings wheel)
and STAND-IN native libraries under it (tests/runtime/tensorrt_harness.py): every class, enum, flag,
signature, the logger and calibrator base classes are TensorRT's own; the first native call
(``trt.Builder(logger)``, ``trt.Runtime(logger)``) fails as it does where the GPU is unreachable. Past that
point the native objects are doubles (tests/runtime/trt_fakes.py) answering with the real enums, and CUDA is
the host-memory stand-in (tests/runtime/host_cudart.py). No engine is built or run here.

The version and the bundles come from the environment (EDGE_TRT_CONTRACT_VERSION, EDGE_TRT_CONTRACT_BUNDLES).
Every test asserts on every version (a version-specific feature asserts its refusal on the others): none skips.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

if "EDGE_TRT_CONTRACT_VERSION" not in os.environ:  # pragma: no cover - only run through the outer test
    pytest.skip("run through tests/integration/test_tensorrt_contract.py", allow_module_level=True)

import tensorrt as trt
from packaging.version import Version

from edge_runtime.backends import tensorrt as backend_mod
from edge_runtime.backends.base import BuildOptions
from edge_runtime.backends.tensorrt import (
    TENSORRT_ERRORS,
    TensorRTBackend,
    TensorRTEngine,
    check_output_shapes,
    entropy_calibrator,
    inspect_io,
    network_flags,
    numpy_dtype,
    tensorrt_logger,
    weak_typing_flag,
)
from edge_runtime.backends.trt_cuda import CudaMemory, CudaStreamRunner
from edge_runtime.backends.trt_recipe import BuildRecipe, plan_build
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import (
    BackendUnavailable,
    EdgeError,
    EngineBuildError,
    EngineLoadTransient,
    InferenceError,
    InputError,
)
from tests.runtime.host_cudart import HostCudart, cudaError_t
from tests.runtime.trt_fakes import FakeBuilder, FakeCudaEngine, FakeParser, read_device

VERSION = os.environ["EDGE_TRT_CONTRACT_VERSION"]
V = Version(VERSION)
TRT11 = V.major >= 11
STRONG = Version("10.12") <= V
BUNDLES: dict[str, str] = json.loads(os.environ["EDGE_TRT_CONTRACT_BUNDLES"])
KINDS = ("fp32", "fp16", "fp16-flag", "int8-qdq", "int8-implicit")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "fp16-flag": "fp16", "int8-qdq": "int8", "int8-implicit": "int8"}
# What 11 cannot build: an FP32 graph at FP16 (only the removed FP16 flag could), implicit INT8.
REFUSED_ON_11 = {"fp16-flag", "int8-implicit"}
REMOVED_IN_11 = (
    "FP16",
    "INT8",
    "EXPLICIT_BATCH",
    "IInt8EntropyCalibrator2",
    "int8_calibrator",
    "set_calibration_profile",
)
SOURCE = Path(backend_mod.__file__)


def bundle(kind: str) -> ModelBundle:
    return ModelBundle.load(BUNDLES[kind])


def options(kind: str, **kw: object) -> BuildOptions:
    b = bundle(kind)
    return BuildOptions(precision=PRECISION[kind], batch=b.manifest.batch, workspace_bytes=256 << 20, **kw)  # type: ignore[arg-type]


def expected_recipe(kind: str) -> tuple[str, bool, tuple[str, ...], bool]:
    """(file parsed, strongly typed, builder flags, calibrator) for this version, from TENSORRT-FACTS."""
    if kind == "fp32":
        return "model.onnx", STRONG, (), False
    if kind == "fp16":
        return ("model.onnx", True, (), False) if STRONG else ("model.fp32.onnx", False, ("FP16",), False)
    if kind == "fp16-flag":
        return "model.onnx", False, ("FP16",), False
    if kind == "int8-qdq":
        return ("model.onnx", True, (), False) if STRONG else ("model.onnx", False, ("FP16", "INT8"), False)
    return "model.onnx", False, ("FP16", "INT8"), True


@pytest.fixture
def host_cuda(monkeypatch: pytest.MonkeyPatch) -> HostCudart:
    """cuda-python replaced by the host-memory stand-in (cuda-python is not installed here)."""
    cudart = HostCudart()
    monkeypatch.setattr("edge_runtime.device.cuda_runtime", lambda: cudart)
    return cudart


@pytest.fixture(autouse=True)
def _parser_state() -> Iterator[None]:
    FakeParser.errors, FakeParser.parsed = [], []
    yield


# -- the module itself -----------------------------------------------------------------------------------
def test_the_real_bindings_are_what_the_backend_imports() -> None:
    assert trt.__version__ == VERSION
    assert Path(trt.__file__).parent.name == "tensorrt"  # the wheel's tensorrt_bindings, as JetPack names it
    assert TensorRTBackend().version() == VERSION
    assert backend_mod.trt.Builder is trt.Builder and backend_mod.trt.BuilderFlag is trt.BuilderFlag
    assert not hasattr(trt.ICudaEngine, "get_binding_index")  # TensorRT 8's binding API: gone in 10 and 11
    for name in ("execute_async_v3", "set_tensor_address", "set_input_shape"):
        assert hasattr(trt.IExecutionContext, name)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def test_removed_names_are_reached_only_through_the_pre11_door() -> None:
    """No attribute access to a name TensorRT 11 removed anywhere in the backend (only _pre11 strings)."""
    for path in (SOURCE, SOURCE.with_name("trt_recipe.py"), SOURCE.with_name("trt_cuda.py")):
        tree = ast.parse(path.read_text())
        used = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in REMOVED_IN_11]
        assert used == [], f"{path.name} uses {used}"
    present = {
        "FP16": hasattr(trt.BuilderFlag, "FP16"),
        "INT8": hasattr(trt.BuilderFlag, "INT8"),
        "EXPLICIT_BATCH": hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"),
        "IInt8EntropyCalibrator2": hasattr(trt, "IInt8EntropyCalibrator2"),
        "int8_calibrator": hasattr(trt.IBuilderConfig, "int8_calibrator"),
        "set_calibration_profile": hasattr(trt.IBuilderConfig, "set_calibration_profile"),
    }
    assert present == dict.fromkeys(REMOVED_IN_11, not TRT11)


# -- logging ---------------------------------------------------------------------------------------------
def test_logger_is_a_real_ilogger_routing_into_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    logger = tensorrt_logger()
    assert isinstance(logger, trt.ILogger) and tensorrt_logger() is logger  # one per process
    caplog.set_level(logging.DEBUG, logger="edge_runtime.tensorrt")
    mark = TENSORRT_ERRORS.mark()
    sev = trt.ILogger.Severity
    logger.log(sev.ERROR, "Error Code 4: API Usage Error (network has no outputs)")
    logger.log(sev.WARNING, "the timing cache was built for another device")
    logger.log(sev.INFO, "[MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 20, GPU 300 (MiB)")
    logger.log(sev.INTERNAL_ERROR, "Assertion failed: plan->header.magicTag")
    levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == "edge_runtime.tensorrt"}
    assert levels == {
        "TensorRT: Error Code 4: API Usage Error (network has no outputs)": logging.ERROR,
        "TensorRT: the timing cache was built for another device": logging.WARNING,
        "TensorRT: [MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 20, GPU 300 (MiB)": logging.DEBUG,
        "TensorRT: Assertion failed: plan->header.magicTag": logging.CRITICAL,
    }
    assert TENSORRT_ERRORS.since(mark) == [
        "Error Code 4: API Usage Error (network has no outputs)",
        "Assertion failed: plan->header.magicTag",
    ]
    assert TENSORRT_ERRORS.suffix(mark) == (
        ": Error Code 4: API Usage Error (network has no outputs); Assertion failed: plan->header.magicTag"
    )


def test_the_real_builder_takes_our_logger_and_fails_at_the_native_call() -> None:
    """The TypeError is the factory's nullptr (the stand-in), not 'incompatible constructor arguments'."""
    with pytest.raises(TypeError, match="factory function returned nullptr"):
        trt.Builder(tensorrt_logger())
    with pytest.raises(TypeError, match="factory function returned nullptr"):
        trt.Runtime(tensorrt_logger())
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        trt.Builder(object())  # the check above would catch a logger the bindings do not accept


# -- builds ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_plan_per_version(kind: str) -> None:
    if TRT11 and kind in REFUSED_ON_11:
        with pytest.raises(EngineBuildError, match=rf"TensorRT {VERSION} .*(Q/DQ|FP16 ONNX)"):
            TensorRTBackend().plan(bundle(kind), options(kind))
        return
    recipe = TensorRTBackend().plan(bundle(kind), options(kind))
    assert (recipe.source.name, recipe.strongly_typed, recipe.flags, recipe.calibrate) == expected_recipe(
        kind
    )


@pytest.mark.parametrize("kind", KINDS)
def test_build_ends_at_the_native_builder(
    kind: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole build path on the real module up to trt.Builder(logger), which the stand-in fails: our one
    sentence wraps the TypeError. Refusals on 11 come before any native call."""
    builders: list[object] = []
    real = backend_mod._create_builder
    monkeypatch.setattr(
        backend_mod, "_create_builder", lambda logger: builders.append(logger) or real(logger)
    )
    caplog.set_level(logging.INFO, logger="edge_runtime.backends.tensorrt")
    if TRT11 and kind in REFUSED_ON_11:
        with pytest.raises(EngineBuildError) as refused:
            TensorRTBackend().build(bundle(kind), options(kind))
        assert f"TensorRT {VERSION}" in str(refused.value) and "\n" not in str(refused.value)
        assert builders == []  # refused before building
        return
    with pytest.raises(BackendUnavailable) as err:
        TensorRTBackend().build(bundle(kind), options(kind))
    sentence = str(err.value)
    assert sentence.startswith(
        f"TensorRT {VERSION} found no GPU (trt.Builder failed: pybind11::init(): "
        "factory function returned nullptr)"
    )
    assert "`runtime: nvidia`" in sentence and "\n" not in sentence
    assert len(builders) == 1 and isinstance(builders[0], trt.ILogger)
    source, strong, flags, calibrate = expected_recipe(kind)
    described = f"{source}, {'strongly' if strong else 'weakly'} typed" + (
        f", flags {'+'.join(flags)}" if flags else ""
    )
    assert (
        f"TensorRT {VERSION} build: {described}{', entropy calibrator' if calibrate else ''}\n" in caplog.text
    )


@pytest.mark.parametrize("kind", KINDS)
def test_build_drives_the_builder_api(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_cuda: HostCudart
) -> None:
    """Past the native builder (a double answering with the real enums): network flags, workspace pool,
    profile dims, builder flags per version, the INT8 calibrator and its MIN=OPT=MAX profile, timing cache."""
    b = bundle(kind)
    builder = FakeBuilder(b.inputs)
    monkeypatch.setattr(backend_mod, "_create_builder", lambda logger: builder)
    monkeypatch.setattr(backend_mod.trt, "OnnxParser", FakeParser)
    timing = tmp_path / "timing.cache"
    timing.write_text('["tactic-from-another-model"]')
    written_cache = tmp_path / "calibration.cache"
    opts = options(kind, timing_cache=timing, calibration_cache=written_cache)
    if TRT11 and kind in REFUSED_ON_11:
        with pytest.raises(EngineBuildError, match=f"TensorRT {VERSION}"):
            TensorRTBackend().build(b, opts)
        assert builder.network is None
        return
    plan = TensorRTBackend().build(b, opts)
    assert plan == b"serialized plan"
    source, strong, flags, calibrate = expected_recipe(kind)
    assert FakeParser.parsed == [str(b.path / source)]
    assert builder.network is not None and builder.config is not None
    expected_flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strong else 0
    assert builder.network.flags == expected_flags
    config = builder.config
    assert config.pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert config.flags == [getattr(trt.BuilderFlag, f) for f in flags]
    (profile,) = config.profiles
    batch = b.manifest.batch
    assert profile.shapes["image"] == (
        (batch.min, 3, 224, 224),
        (batch.opt, 3, 224, 224),
        (batch.max, 3, 224, 224),
    )
    assert json.loads(timing.read_text()) == ["fresh-tactic", "tactic-from-another-model"]  # merged on save
    if calibrate:
        assert config.int8_calibrator is not None and config.calibration_profile is not None
        size = batch.opt
        assert config.calibration_profile.shapes["image"] == ((size, 3, 224, 224),) * 3
        data = np.load(b.calibration_path("data"))  # type: ignore[arg-type]
        n = len(data["image"]) // size
        assert len(builder.calibration_batches) == n
        for i, got in enumerate(builder.calibration_batches):
            for name in ("image", "robot_state"):
                np.testing.assert_array_equal(got[name], data[name][i * size : (i + 1) * size])
        assert builder.calibration_cache_read == b.calibration_path("cache").read_bytes()  # type: ignore[union-attr]
        assert written_cache.read_bytes() == b"TRT-calibration-written-by-the-build"
        assert host_cuda.memory == {}  # calibration buffers freed after the build
    else:
        assert config.int8_calibrator is None and config.calibration_profile is None


def ranged_bundle(tmp: Path) -> ModelBundle:
    """The fp32 bundle with its image's H and W declared dynamic with recorded ranges (bundle.json only: the
    parser is a double, and bundle.json is not among the hashed files)."""
    src = bundle("fp32")
    dst = tmp / "ranged"
    shutil.copytree(src.path, dst)
    raw = json.loads((dst / "bundle.json").read_text())
    image = next(t for t in raw["inputs"] if t["name"] == "image")
    image["shape"] = ["batch", 3, "H", "W"]
    image["ranges"] = {"2": {"min": 96, "opt": 160, "max": 224}, "3": {"min": 128, "opt": 224, "max": 224}}
    raw["schema_version"] = 2
    (dst / "bundle.json").write_text(json.dumps(raw))
    return ModelBundle.load(dst)


def test_optimization_profile_takes_the_bundles_recorded_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle with ranged non-batch axes: ``profile.set_shape`` gets trt.Dims of the recorded MIN/OPT/MAX on
    those axes and the batch profile on the batch axis; the engine cache key carries the ranges."""
    from edge_runtime.cache import engine_key
    from edge_runtime.device import DeviceIdentity

    b = ranged_bundle(tmp_path)
    builder = FakeBuilder(b.inputs)
    monkeypatch.setattr(backend_mod, "_create_builder", lambda logger: builder)
    monkeypatch.setattr(backend_mod.trt, "OnnxParser", FakeParser)
    opts = BuildOptions.for_bundle(b, None, "fp32")
    assert TensorRTBackend().build(b, opts) == b"serialized plan"
    assert builder.config is not None
    (profile,) = builder.config.profiles
    batch = b.manifest.batch
    assert profile.shapes["image"] == (
        (batch.min, 3, 96, 128),
        (batch.opt, 3, 160, 224),
        (batch.max, 3, 224, 224),
    )
    assert profile.shapes["robot_state"] == ((batch.min, 48), (batch.opt, 48), (batch.max, 48))
    device = DeviceIdentity("aarch64", "36.4.0", "jetson-orin-nano", "Orin", "8.7", "cortex-a78ae")
    ranged_key = engine_key(b.sha256, "tensorrt", VERSION, device, opts)
    plain_key = engine_key(b.sha256, "tensorrt", VERSION, device, options("fp32"))
    assert ranged_key.parts["shape_ranges"] == [
        ["image", [[1, 3, 96, 128], [1, 3, 160, 224], [8, 3, 224, 224]]]
    ]
    assert ranged_key.digest != plain_key.digest and "shape_ranges" not in plain_key.parts


def test_build_failure_sentence_carries_tensorrt_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bundle("fp32")
    error = "[optimizer.cpp::computeCosts::3869] Error Code 10: Internal Error (Could not find any implementation)"
    monkeypatch.setattr(backend_mod, "_create_builder", lambda logger: FakeBuilder(b.inputs, error=error))
    monkeypatch.setattr(backend_mod.trt, "OnnxParser", FakeParser)
    with pytest.raises(EngineBuildError) as err:
        TensorRTBackend().build(b, options("fp32"))
    assert str(err.value).startswith(f"TensorRT {VERSION} could not build the engine (model.onnx, ")
    assert str(err.value).endswith("Error Code 10: Internal Error (Could not find any implementation).")


def test_parse_failure_and_refused_profile_are_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bundle("fp32")
    builder = FakeBuilder(b.inputs)
    monkeypatch.setattr(backend_mod, "_create_builder", lambda logger: builder)
    monkeypatch.setattr(backend_mod.trt, "OnnxParser", FakeParser)
    FakeParser.errors = ["In node 3 (Concat): INVALID_NODE: axis out of range"]
    with pytest.raises(EngineBuildError, match=rf"TensorRT {VERSION} could not parse model\.onnx: In node 3"):
        TensorRTBackend().build(b, options("fp32"))
    FakeParser.errors = []
    original = builder.create_builder_config

    def refusing() -> object:
        config = original()
        config.refuse_profile = True
        return config

    builder.create_builder_config = refusing  # type: ignore[method-assign]
    with pytest.raises(EngineBuildError, match="refused the optimization profile for batch 1,1,8"):
        TensorRTBackend().build(b, options("fp32"))


def test_network_and_builder_flags_per_version() -> None:
    strong = BuildRecipe(Path("m.onnx"), strongly_typed=True)
    weak = BuildRecipe(Path("m.onnx"), strongly_typed=False)
    stbit = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert network_flags(strong, V) == stbit and network_flags(weak, V) == 0
    if (
        TRT11
    ):  # what a JetPack 5 (TensorRT 8.6) recipe needs does not exist here: one sentence, no AttributeError
        with pytest.raises(EngineBuildError, match=f"TensorRT {VERSION} has no EXPLICIT_BATCH"):
            network_flags(weak, Version("8.6.1"))
        for name in ("FP16", "INT8"):
            with pytest.raises(EngineBuildError, match=f"TensorRT {VERSION} has no {name}"):
                weak_typing_flag(name)
    else:
        explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        assert network_flags(weak, Version("8.6.1")) == explicit
        assert (
            weak_typing_flag("FP16") is trt.BuilderFlag.FP16
            and weak_typing_flag("INT8") is trt.BuilderFlag.INT8
        )


# -- INT8 calibrator -------------------------------------------------------------------------------------
def test_calibrator_over_the_bundles_calibration_data(tmp_path: Path) -> None:
    b = bundle("int8-implicit")
    opts = options("int8-implicit", calibration_cache=tmp_path / "written.cache")
    if TRT11:
        with pytest.raises(EngineBuildError, match=f"TensorRT {VERSION} has no IInt8EntropyCalibrator2"):
            entropy_calibrator(b, opts)
        with pytest.raises(EngineBuildError, match=f"TensorRT {VERSION} has no implicit INT8 calibration"):
            plan_build(b, "int8", V)  # what build() asks first: the calibrator is never reached on 11
        return
    cudart = HostCudart()
    calibrator = entropy_calibrator(b, opts, memory=CudaMemory(cudart))
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and isinstance(calibrator, trt.IInt8Calibrator)
    assert calibrator.get_algorithm() == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2  # TensorRT's own C++
    assert calibrator.read_calibration_cache() == b.calibration_path("cache").read_bytes()  # type: ignore[union-attr]
    data = np.load(b.calibration_path("data"))  # type: ignore[arg-type]
    size = opts.batch.opt
    seen = 0
    while pointers := calibrator.get_batch(["robot_state", "image"]):  # TensorRT's order, not the bundle's
        shapes = {"robot_state": (size, 48), "image": (size, 3, 224, 224)}
        for name, ptr in zip(("robot_state", "image"), pointers, strict=True):
            np.testing.assert_array_equal(
                read_device(ptr, shapes[name], np.float32), data[name][seen : seen + size]
            )
        seen += size
    assert seen == len(data["image"]) and calibrator.get_batch(["image", "robot_state"]) is None
    calibrator.write_calibration_cache(memoryview(b"TRT-101303-EntropyCalibration2\n"))
    assert (tmp_path / "written.cache").read_bytes() == b"TRT-101303-EntropyCalibration2\n"
    calibrator.release()
    assert cudart.memory == {}


def test_calibrator_refuses_a_bundle_without_calibration_files() -> None:
    with pytest.raises(EngineBuildError, match="INT8 needs calibration data or a calibration cache"):
        entropy_calibrator(bundle("fp32"), options("fp32"))


# -- loads -----------------------------------------------------------------------------------------------
def test_dtype_mapping_agrees_with_trt_nptype() -> None:
    members = list(trt.DataType.__members__.values())
    assert {"FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4"} <= {
        m.name for m in members
    }
    for member in members:
        try:
            expected = np.dtype(trt.nptype(member))
        except TypeError:
            with pytest.raises(
                EngineBuildError, match=f"is {member.name} in the engine, which numpy cannot hold"
            ):
                numpy_dtype(member, "Output 'action'")
        else:
            assert numpy_dtype(member, "Output 'action'") == expected


def _ort_compute(kind: str):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle(kind).model_path), providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip(["action"], session.run(["action"], feeds), strict=True))


def _engine(**kw: object) -> FakeCudaEngine:
    b = bundle("fp32")
    batch = b.manifest.batch
    return FakeCudaEngine(b.inputs, b.outputs, (batch.min, batch.max), _ort_compute("fp32"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variant", "kw", "refusal"),
    [
        (
            "renamed output",
            {"rename": {"action": "output_0"}},
            r"outputs \(output_0\) are not the bundle's \(action\)",
        ),
        (
            "fp16 input",
            {"dtypes": {"image": "HALF"}},
            r"Input 'image' is float16 in the engine but float32 in the bundle \(2 vs 4 bytes",
        ),
        (
            "bf16 output",
            {"dtypes": {"action": "BF16"}},
            r"Output 'action' is BF16 in the engine, which numpy cannot hold",
        ),
        (
            "rank",
            {"ranks": {"action": 3}},
            r"Output 'action' has 3 dimensions in the engine but 2 in the bundle",
        ),
    ],
)
def test_engine_io_is_checked_at_load(variant: str, kw: dict, refusal: str) -> None:
    b = bundle("fp32")
    assert inspect_io(_engine(), b.inputs, b.outputs).dtypes == {
        "image": np.float32,
        "robot_state": np.float32,
        "action": np.float32,
    }
    with pytest.raises(EngineBuildError, match=refusal):
        TensorRTEngine(_engine(**kw), b.inputs, b.outputs, b.manifest.batch, runner=object())  # type: ignore[arg-type]


def test_data_dependent_output_shape_is_refused_at_load() -> None:
    b = bundle("fp32")
    engine = _engine(data_dependent=["action"])
    with pytest.raises(EngineBuildError, match=r"Output 'action' has a data-dependent shape \(\[1, -1\]"):
        check_output_shapes(
            engine.create_execution_context(),
            inspect_io(engine, b.inputs, b.outputs),  # type: ignore[arg-type]
            b.inputs,
            b.manifest.batch,
        )


def test_profile_that_is_not_the_bundles_is_refused_at_load() -> None:
    b = bundle("fp32")
    engine = _engine()
    engine.batch = (2, 8)  # the engine's profile starts at 2, the bundle's OPT is 1
    with pytest.raises(EngineBuildError, match=r"refuses input 'image' at shape \[1, 3, 224, 224\]"):
        TensorRTEngine(engine, b.inputs, b.outputs, b.manifest.batch, runner=object())  # type: ignore[arg-type]


def test_no_execution_context_is_transient() -> None:
    b = bundle("fp32")
    with pytest.raises(EngineLoadTransient, match="could not create an execution context"):
        TensorRTEngine(_engine(no_context=True), b.inputs, b.outputs, b.manifest.batch, runner=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_infers_through_the_cuda_plumbing(cuda_graph: bool) -> None:
    """Load → infer → close with the real enums, a double for the context and host memory for CUDA: the
    bytes bound, copied and returned are the model's own outputs (ONNX Runtime computes the 'kernel')."""
    import onnxruntime as ort

    b = bundle("fp32")
    cudart = HostCudart()
    engine_double = _engine(cudart=cudart)
    runner = CudaStreamRunner(cudart, cuda_graph=cuda_graph)
    engine = TensorRTEngine(engine_double, b.inputs, b.outputs, b.manifest.batch, runner=runner)
    session = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (2, 2, 5, 2):
        feeds = {
            "image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32),
            "robot_state": rng.standard_normal((batch, 48)).astype(np.float32),
        }
        out = engine.infer(feeds)
        np.testing.assert_allclose(out["action"], session.run(["action"], feeds)[0], rtol=1e-6, atol=1e-6)
    # plain: one enqueue per request; graphs: warm-up + capture per new shape (2, 5, 2), one replay (2 again)
    assert runner.captures == (3 if cuda_graph else 0)
    assert cudart.names().count("cudaGraphLaunch") == (1 if cuda_graph else 0)
    with pytest.raises(InputError, match=r"Input 'image' has dtype float64, expected float32"):
        engine.infer({"image": np.zeros((1, 3, 224, 224)), "robot_state": np.zeros((1, 48), np.float32)})
    with pytest.raises(InputError, match="outside the engine's optimization profile"):
        engine.infer(
            {"image": np.zeros((9, 3, 224, 224), np.float32), "robot_state": np.zeros((9, 48), np.float32)}
        )
    engine.close()
    assert cudart.memory == {} and cudart.graphs_alive == 0


def test_load_ends_at_the_native_runtime_and_the_cache_keeps_the_engine(tmp_path: Path) -> None:
    from edge_runtime.cache import EngineCache, engine_key
    from edge_runtime.device import device_identity

    b, backend, opts = bundle("fp32"), TensorRTBackend(), options("fp32")
    with pytest.raises(EngineLoadTransient) as err:
        backend.load(b"a plan", b, opts)
    assert str(err.value).startswith(
        f"TensorRT {VERSION} found no GPU (trt.Runtime failed: pybind11::init(): "
    )
    assert "`runtime: nvidia`" in str(err.value)
    cache, dev = EngineCache(tmp_path), device_identity()
    cache.prepare()
    key = engine_key(b.sha256, backend.name, backend.version(), dev, opts, backend.build_recipe)
    stored = cache._store(key, backend, b"a plan built before the GPU went away", 1.0)
    with pytest.raises(EngineLoadTransient, match="found no GPU"):
        cache.open(backend, b, opts, dev)
    assert stored.is_file() and list((tmp_path / "quarantine").iterdir()) == []


class _FailingRuntime:
    def __init__(self, message: str) -> None:
        self.message = message

    def deserialize_cuda_engine(self, data: bytes) -> None:
        tensorrt_logger().log(trt.ILogger.Severity.ERROR, self.message)


@pytest.mark.parametrize(
    ("message", "error", "quarantined"),
    [
        (
            "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization assertion "
            "plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)",
            EngineBuildError,
            True,
        ),
        (
            "Requested amount of GPU memory (1073741824 bytes) could not be allocated. There may not be enough "
            "free memory for allocation to succeed.",
            EngineLoadTransient,
            False,
        ),
    ],
)
def test_only_a_failed_deserialization_quarantines(
    message: str, error: type[EdgeError], quarantined: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.cache import EngineCache, engine_key
    from edge_runtime.device import device_identity

    monkeypatch.setattr(backend_mod, "_create_runtime", lambda logger: _FailingRuntime(message))
    b, backend, opts = bundle("fp32"), TensorRTBackend(), options("fp32")
    with pytest.raises(error) as err:
        backend.load(b"a plan", b, opts)
    assert str(err.value).endswith(" ".join(message.split())[:200].rstrip(". ") + ".")
    cache, dev = EngineCache(tmp_path), device_identity()
    cache.prepare()
    key = engine_key(b.sha256, backend.name, backend.version(), dev, opts, backend.build_recipe)
    cache._store(key, backend, b"a plan", 1.0)
    # A quarantined entry is rebuilt, and the rebuild ends at the stand-in's native builder.
    with pytest.raises(BackendUnavailable if quarantined else EngineLoadTransient):
        cache.open(backend, b, opts, dev)
    assert bool(list((tmp_path / "quarantine").iterdir())) is quarantined


# -- require() -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cudart", "detail"),
    [
        (None, "cuda-python is not installed"),
        (HostCudart(fail={"cudaGetDeviceCount": cudaError_t.cudaErrorNoDevice}), "cudaErrorNoDevice"),
        (HostCudart(devices=0), "CUDA counts 0 devices"),
    ],
)
def test_require_says_tensorrt_found_no_gpu(
    cudart: HostCudart | None, detail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.backends import get_backend

    monkeypatch.setattr("edge_runtime.device.cuda_runtime", lambda: cudart)
    with pytest.raises(BackendUnavailable) as err:
        get_backend("tensorrt")
    sentence = str(err.value)
    assert sentence.startswith(f"TensorRT {VERSION} found no GPU (") and detail in sentence
    assert "was the container started with the NVIDIA runtime (`runtime: nvidia`" in sentence
    assert "\n" not in sentence and sentence.endswith("?")


def test_require_passes_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_runtime.device.cuda_runtime", lambda: HostCudart(devices=1))
    TensorRTBackend().require()


# -- request slots: one execution context and one CUDA stream per slot on the same engine --------------------
def test_slots_run_at_once_each_on_its_own_context_and_stream() -> None:
    """Three slots: three contexts from the one engine, three runners (streams, buffers); six threads at once
    each get their own inputs' outputs back, and close() releases every slot's device memory."""
    import threading

    import onnxruntime as ort

    b = bundle("fp32")
    cudart = HostCudart()
    engine_double = _engine(cudart=cudart)
    runners = [CudaStreamRunner(cudart) for _ in range(3)]
    engine = TensorRTEngine(engine_double, b.inputs, b.outputs, b.manifest.batch, runners=runners)
    assert engine.slots == 3
    contexts = [c for c, _ in engine._slots]
    assert len({id(c) for c in contexts}) == 3 and engine.context is contexts[0]
    assert len({r.stream_handle for r in runners}) == 3
    session = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(3):
                feeds = {
                    "image": rng.standard_normal((2, 3, 224, 224)).astype(np.float32),
                    "robot_state": rng.standard_normal((2, 48)).astype(np.float32),
                }
                out = engine.infer(feeds)
                np.testing.assert_allclose(
                    out["action"], session.run(["action"], feeds)[0], rtol=1e-6, atol=1e-6
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert sum(c.enqueues for c in contexts) == 18  # every call ran on one of the slots' contexts
    engine.close()
    assert cudart.memory == {}
    with pytest.raises(InferenceError, match="closed"):
        engine.infer(
            {"image": np.zeros((1, 3, 224, 224), np.float32), "robot_state": np.zeros((1, 48), np.float32)}
        )


def test_a_slot_without_a_context_is_transient_and_named() -> None:
    b = bundle("fp32")
    engine_double = _engine()
    made: list[object] = []
    real = engine_double.create_execution_context

    def second_fails() -> object:
        made.append(1)
        return real() if len(made) < 2 else None

    engine_double.create_execution_context = second_fails  # type: ignore[method-assign]
    with pytest.raises(EngineLoadTransient, match="could not create an execution context 2 of 2"):
        TensorRTEngine(engine_double, b.inputs, b.outputs, b.manifest.batch, runners=[object(), object()])  # type: ignore[list-item]
