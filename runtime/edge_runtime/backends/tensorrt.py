"""TensorRT backend: ONNX → serialized plan on the robot's own GPU, and a runtime on a CUDA stream.

Written against TensorRT's real Python API and checked against the bindings of 10.3 (JetPack 6), 10.13
(JetPack 7) and 11.4 (scripts/tensorrt-contract: the real modules with stand-in native libraries, plus mypy
against stubs generated from each). TensorRT 8.5/8.6 (JetPack 5) keeps working through the same named-tensor
API (``execute_async_v3`` exists since 8.5); the binding-index API of TensorRT 8 is gone from this module.
No engine is built or run on our development and CI machines (no TensorRT native libraries there): the
contract tests drive everything up to the first native call, ``trt.Builder(logger)`` / ``trt.Runtime``.

- ``trt`` below is the ``tensorrt`` module, typed from its stubs for mypy and imported on first use at run
  time (``_LazyModule``); an import failure is one BackendUnavailable sentence. Names TensorRT 11 removed
  (BuilderFlag.FP16/INT8, NetworkDefinitionCreationFlag.EXPLICIT_BATCH, IInt8EntropyCalibrator2,
  IBuilderConfig.int8_calibrator / set_calibration_profile) are reached only through ``_pre11``, on recipes
  that ``trt_recipe.plan_build`` gives to TensorRT 10 and older.
- Precision per version (``trt_recipe``): strongly typed networks from 10.12 on, precision from the graph.
- TensorRT's log goes to the ``edge_runtime.tensorrt`` logger (``tensorrt_logger``); its last errors end
  the sentence of the exception that follows them.
- CUDA (stream, buffers, copies, graphs) lives in ``trt_cuda`` and needs no TensorRT.

Polygraphy: not used here, by decision. Its loaders (``polygraphy.backend.trt``: NetworkFromOnnxPath,
CreateConfig, EngineFromNetwork, TrtRunner) would replace the network/config/build calls, but (1) the robot
image installs only the ``[device]``/``[jetson]`` extras and Polygraphy is a host tool (4.8 MB, a second
logger, its own ctypes CUDA wrapper beside cuda-python); (2) its precision switches are the builder flags
(``CreateConfig(fp16=True)`` sets BuilderFlag.FP16, the INT8 calibrator attribute), exactly what TensorRT
11 removed, so the version logic would remain ours; (3) failures surface as its own multi-line log and
exceptions, not one sentence with TensorRT's errors. What we take from it: lazy imports, and its timing
cache handling (combine the cache on disk into the new one under a lock before saving).
"""

from __future__ import annotations

import functools
import importlib
import logging
import queue
import re
import threading
import types
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from packaging.version import Version

from edge_runtime.backends.base import BuildOptions
from edge_runtime.backends.trt_cuda import CudaMemory, CudaStreamRunner, cuda_error_name
from edge_runtime.backends.trt_recipe import BuildRecipe, plan_build
from edge_runtime.bundle import AxisRange, BatchProfile, ModelBundle, TensorSpec
from edge_runtime.errors import (
    BackendUnavailable,
    EdgeError,
    EngineBuildError,
    EngineLoadTransient,
    InferenceError,
    InputError,
)

log = logging.getLogger(__name__)
TRT_LOG = logging.getLogger("edge_runtime.tensorrt")  # TensorRT's own messages


class _LazyModule(types.ModuleType):
    """Stands for a heavy module until an attribute is used, then forwards to it (import once, then cached)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(name)
        self._why = why
        self._module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module(self.__name__)
            except Exception as exc:
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())
                raise BackendUnavailable(f"{self._why} ({detail}).") from None
        return self._module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._load(), name)


if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = _LazyModule(
        "tensorrt",
        "The tensorrt backend needs TensorRT's Python module; on a Jetson it comes with JetPack "
        "(python3-libnvinfer) and the runtime's Python must see the system site-packages",
    )


def tensorrt_version() -> Version:
    return Version(trt.__version__)


def no_gpu_sentence(version: str, detail: str) -> str:
    """The one sentence for 'TensorRT is here but reaches no GPU' (require(), and the nullptr factories)."""
    return (
        f"TensorRT {version} found no GPU ({detail}); was the container started with the NVIDIA runtime "
        "(`runtime: nvidia` in compose.yaml, `--runtime nvidia` for docker run)?"
    )


# -- TensorRT's log -------------------------------------------------------------------------------------
class ErrorTail:
    """The last errors TensorRT logged, numbered, so an exception can quote the ones since its call began."""

    def __init__(self, keep: int = 16) -> None:
        self._lines: deque[tuple[int, str]] = deque(maxlen=keep)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        with self._lock:
            self._seq += 1
            self._lines.append((self._seq, " ".join(message.split())))

    def mark(self) -> int:
        with self._lock:
            return self._seq

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [msg for seq, msg in self._lines if seq > mark]

    def suffix(self, mark: int, limit: int = 3) -> str:
        """``": first error; second error"`` (the last few, each cut to 200 characters), or ""."""
        errors = self.since(mark)[-limit:]
        return (": " + "; ".join(e[:200].rstrip(". ") for e in errors)) if errors else ""


TENSORRT_ERRORS = ErrorTail()
_logger_lock = threading.Lock()
_logger: trt.ILogger | None = None


def tensorrt_logger() -> trt.ILogger:
    """The process's one TensorRT logger (TensorRT warns when there are several): an ILogger subclass that
    routes messages into Python logging (INFO and VERBOSE at DEBUG: a build logs hundreds) and keeps errors."""
    global _logger
    with _logger_lock:
        if _logger is None:
            sev = trt.ILogger.Severity
            levels = {
                sev.INTERNAL_ERROR: logging.CRITICAL,
                sev.ERROR: logging.ERROR,
                sev.WARNING: logging.WARNING,
                sev.INFO: logging.DEBUG,
                sev.VERBOSE: logging.DEBUG,
            }

            class ServiceLogger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                    level = levels.get(severity, logging.INFO)
                    if level >= logging.ERROR:
                        TENSORRT_ERRORS.add(msg)
                    if TRT_LOG.isEnabledFor(level):
                        TRT_LOG.log(level, "TensorRT: %s", msg)

            _logger = ServiceLogger()
        return _logger


def _looks_transient(messages: Sequence[str]) -> bool:
    """TensorRT's words for running out of GPU memory (deserialization loads the weights onto the GPU)."""
    return any(
        re.search(r"out of memory|could not be allocated|cudaErrorMemoryAllocation", m, re.I)
        for m in messages
    )


# -- native entry points --------------------------------------------------------------------------------
def _create_builder(logger: trt.ILogger) -> trt.Builder:
    try:
        return trt.Builder(logger)
    except TypeError as exc:  # "factory function returned nullptr": TensorRT could not reach a GPU
        raise BackendUnavailable(no_gpu_sentence(trt.__version__, f"trt.Builder failed: {exc}")) from None


def _create_runtime(logger: trt.ILogger) -> trt.Runtime:
    try:
        return trt.Runtime(logger)
    except TypeError as exc:
        # Not the engine's fault: the cache must keep it (EngineLoadTransient is never quarantined).
        raise EngineLoadTransient(no_gpu_sentence(trt.__version__, f"trt.Runtime failed: {exc}")) from None


# -- names TensorRT 11 removed (10.x and older only) ----------------------------------------------------
_INT8_CALIBRATOR = "int8_calibrator"


def _pre11(owner: object, name: str) -> object:
    """The one door to names TensorRT 11 removed, looked up by name so this module type-checks against 11's
    stubs too; only recipes ``plan_build`` gives to TensorRT 10 and older reach it."""
    value = getattr(owner, name, None)
    if value is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no {name}; this build needs TensorRT 10 or older (see the bundle's "
            "precision)."
        )
    return value


def weak_typing_flag(name: str) -> trt.BuilderFlag:
    """BuilderFlag.FP16 / INT8 (weakly typed networks, TensorRT ≤ 10)."""
    flag = _pre11(trt.BuilderFlag, name)
    if not isinstance(flag, trt.BuilderFlag):
        raise EngineBuildError(f"TensorRT {trt.__version__}'s BuilderFlag.{name} is not a builder flag.")
    return flag


def network_flags(recipe: BuildRecipe, version: Version) -> int:
    """create_network flags: STRONGLY_TYPED per recipe; EXPLICIT_BATCH only before 10 (ignored in 10, gone in 11)."""
    flags = 0
    if recipe.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if version.major < 10:
        explicit = _pre11(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
        if not isinstance(explicit, trt.NetworkDefinitionCreationFlag):
            raise EngineBuildError("NetworkDefinitionCreationFlag.EXPLICIT_BATCH is not a network flag.")
        flags |= 1 << int(explicit)
    return flags


def attach_calibrator(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    calibrator: CalibrationFeed,
    inputs: Sequence[TensorSpec],
) -> None:
    """Implicit INT8 (TensorRT ≤ 10): the calibrator, with its own MIN=OPT=MAX profile at the calibration batch
    size, as trtexec does (the build profile's range would make TensorRT calibrate at an arbitrary shape)."""
    size = calibrator.samples
    # Ranged non-batch axes are pinned to their OPT size too: calibration runs at one shape.
    pinned = [
        replace(s, ranges=tuple(AxisRange(r.axis, r.opt, r.opt, r.opt) for r in s.ranges)) for s in inputs
    ]
    profile = optimization_profile(builder, pinned, BatchProfile(size, size, size))
    set_profile = _pre11(config, "set_calibration_profile")
    if not callable(set_profile) or not set_profile(profile):
        raise EngineBuildError(f"TensorRT refused the calibration profile (batch {size}).")
    _pre11(trt.IBuilderConfig, _INT8_CALIBRATOR)
    setattr(config, _INT8_CALIBRATOR, calibrator)


# -- INT8 calibration (TensorRT ≤ 10) ------------------------------------------------------------------
class DeviceMemory(Protocol):
    """Where calibration batches go for TensorRT to read: CudaMemory on a GPU, host memory in tests."""

    def alloc(self, nbytes: int) -> int: ...

    def copy_in(self, ptr: int, host: np.ndarray) -> None: ...

    def free(self, ptr: int) -> None: ...


class CalibrationFeed:
    """Batches of the bundle's calibration data and its calibration cache, as TensorRT's entropy calibrator
    asks for them. Mixed into IInt8EntropyCalibrator2 by ``entropy_calibrator``: ``__init__`` is cooperative,
    so the TensorRT base class's ``__init__`` runs, as pybind11 requires of a subclass.

    Networks are explicit-batch: each batch holds ``samples`` samples along the batch axis, the calibration
    profile's MIN=OPT=MAX, and ``get_batch_size`` answers 1 (TensorRT 10 deprecates it; trtexec and Polygraphy
    answer 1 too)."""

    def __init__(
        self,
        batches: Mapping[str, np.ndarray],
        samples: int,
        cache_in: Path | None,
        cache_out: Path | None,
        memory: DeviceMemory | None = None,
    ) -> None:
        super().__init__()
        self.batches = dict(batches)
        self.samples = samples
        self.cache_in = cache_in
        self.cache_out = cache_out
        self.memory = memory
        self.index = 0
        self.total = min((len(a) for a in self.batches.values()), default=0)
        self._device: dict[str, int] = {}
        # TensorRT reads the cache through a pointer into the returned buffer after the call returns:
        # the bytes must stay referenced here (a temporary would be freed under it).
        self._cache: bytes | None = None

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: list[str], *_: object) -> list[int] | None:
        """Device pointers of the next batch, one per input name; None when the data is used up."""
        if self.index + self.samples > self.total:
            return None
        try:
            if self.memory is None:
                self.memory = CudaMemory()
            pointers = []
            for name in names:
                chunk = np.ascontiguousarray(self.batches[name][self.index : self.index + self.samples])
                if name not in self._device:
                    self._device[name] = self.memory.alloc(chunk.nbytes)
                self.memory.copy_in(self._device[name], chunk)
                pointers.append(self._device[name])
        except (EdgeError, KeyError) as exc:  # raised into TensorRT it would be lost: log it, end calibration
            msg = f"INT8 calibration stopped: {exc}"
            TENSORRT_ERRORS.add(msg)
            log.error("%s", msg)
            return None
        self.index += self.samples
        return pointers

    def read_calibration_cache(self) -> bytes | None:
        if self._cache is None and self.cache_in is not None:
            try:
                self._cache = self.cache_in.read_bytes() or None  # empty: calibrate from the data
            except OSError as exc:
                log.warning("could not read the INT8 calibration cache %s (%s)", self.cache_in, exc)
            if self._cache is not None:
                log.info("INT8: reading calibration cache %s", self.cache_in.name)
        return self._cache

    def write_calibration_cache(self, cache: Any) -> None:
        if self.cache_out is None:  # the bundle is read-only; a cache is written only where asked
            return
        from edge_runtime.cache import atomic_write

        try:
            atomic_write(self.cache_out, bytes(memoryview(cache)))
        except OSError as exc:
            log.warning("could not write the INT8 calibration cache %s (%s)", self.cache_out, exc)

    def release(self) -> None:
        if self.memory is not None:
            for ptr in self._device.values():
                self.memory.free(ptr)
        self._device.clear()

    @classmethod
    def read_bundle(
        cls, bundle: ModelBundle, options: BuildOptions
    ) -> tuple[dict[str, np.ndarray], int, Path | None]:
        """The bundle's calibration arrays (checked against its inputs), samples per batch, cache to read."""
        data_path = bundle.calibration_path("data")
        # The cache written by an earlier build here (options.calibration_cache) first, else the bundle's.
        candidates = [
            p for p in (options.calibration_cache, bundle.calibration_path("cache")) if p is not None
        ]
        cache_path = next((p for p in candidates if p.is_file()), None)
        has_data = data_path is not None and data_path.is_file()
        has_cache = cache_path is not None
        if not has_data and not has_cache:
            raise EngineBuildError(
                "INT8 needs calibration data or a calibration cache in the bundle; it has neither."
            )
        batches: dict[str, np.ndarray] = {}
        samples = options.batch.opt
        if has_data and data_path is not None:
            try:
                with np.load(data_path, allow_pickle=False) as npz:
                    for spec in bundle.inputs:
                        if spec.name not in npz.files:
                            raise EngineBuildError(
                                f"Calibration data {data_path.name} has no array {spec.name!r} for that input."
                            )
                        batches[spec.name] = np.ascontiguousarray(npz[spec.name].astype(spec.dtype))
            except (OSError, ValueError) as exc:
                raise EngineBuildError(f"Calibration data {data_path.name} is unreadable ({exc}).") from None
            for spec in bundle.inputs:
                arr = batches[spec.name]
                fixed = tuple(d for d in spec.shape[1:])
                if arr.ndim != len(spec.shape) or any(
                    isinstance(d, int) and d != n for d, n in zip(fixed, arr.shape[1:], strict=True)
                ):
                    raise EngineBuildError(
                        f"Calibration array {spec.name!r} has shape {list(arr.shape)}, expected [N, "
                        f"{', '.join(map(str, fixed))}]."
                    )
            have = min(len(a) for a in batches.values())
            if have < samples and not has_cache:
                raise EngineBuildError(
                    f"Calibration data has {have} sample(s), fewer than one batch of {samples}."
                )
        return batches, samples, cache_path if has_cache else None


def entropy_calibrator(
    bundle: ModelBundle, options: BuildOptions, memory: DeviceMemory | None = None
) -> CalibrationFeed:
    """An IInt8EntropyCalibrator2 (TensorRT ≤ 10) fed from the bundle; device memory only on first batch."""
    batches, samples, cache_in = CalibrationFeed.read_bundle(bundle, options)
    base = _pre11(trt, "IInt8EntropyCalibrator2")
    if not isinstance(base, type):
        raise EngineBuildError("TensorRT's IInt8EntropyCalibrator2 is not a class.")
    cls = type("EntropyCalibrator", (CalibrationFeed, base), {})
    calibrator = cls(batches, samples, cache_in, options.calibration_cache, memory)
    if not isinstance(calibrator, CalibrationFeed):
        raise EngineBuildError("The INT8 calibrator could not be made.")
    return calibrator


def _ranges_note(inputs: Sequence[TensorSpec]) -> str:
    ranged = [f"{s.name} axis {r.axis} {r}" for s in inputs for r in s.ranges]
    return f" and ranges {', '.join(ranged)}" if ranged else ""


# -- engines: build --------------------------------------------------------------------------------------
def optimization_profile(
    builder: trt.Builder, inputs: Sequence[TensorSpec], batch: BatchProfile
) -> trt.IOptimizationProfile:
    """One profile for every input: the batch axis from the batch profile, each ranged non-batch axis from the
    bundle's MIN/OPT/MAX for it (``TensorSpec.profile_shapes``)."""
    profile = builder.create_optimization_profile()
    for spec in inputs:
        lo, opt, hi = (trt.Dims(list(shape)) for shape in spec.profile_shapes(batch))
        profile.set_shape(spec.name, lo, opt, hi)
    return profile


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache | None:
    """Load the shared timing cache; an unreadable one (corrupt, other TensorRT or GPU) falls back to an
    empty one, which the save then replaces."""
    blob = b""
    try:
        blob = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        log.warning("could not read the TensorRT timing cache %s (%s); starting an empty one", path, exc)
    if blob:
        loaded: trt.ITimingCache | None = config.create_timing_cache(blob)  # None when corrupt
        if loaded is not None and config.set_timing_cache(loaded, ignore_mismatch=False):
            return loaded
        log.warning(
            "TensorRT timing cache %s is unusable (corrupt or from another TensorRT/GPU); starting an empty one",
            path.name,
        )
    empty: trt.ITimingCache | None = config.create_timing_cache(b"")
    if empty is None or not config.set_timing_cache(empty, ignore_mismatch=False):
        log.warning("TensorRT refused an empty timing cache; building without one")
        return None
    return empty


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge what is on disk into this build's cache and replace the file, under the cache's lock (several
    containers build at once: without the merge the last writer drops the others' timings). Never fails the
    build: the engine is already made."""
    from edge_runtime.cache import atomic_write, shared_file_lock

    try:
        current: trt.ITimingCache | None = config.get_timing_cache()
        if current is None:
            log.warning("TensorRT returned no timing cache after the build; %s is left as it was", path.name)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with shared_file_lock(path):
            if path.is_file():
                previous: trt.ITimingCache | None = config.create_timing_cache(path.read_bytes())
                if previous is not None and not current.combine(previous, ignore_mismatch=True):
                    log.warning("could not merge the timing cache on disk into this build's; replacing it")
            atomic_write(path, bytes(memoryview(current.serialize())))
    except Exception as exc:  # the cache is an optimisation: report, never fail the build over it
        log.warning("could not save the TensorRT timing cache %s (%s: %s)", path, type(exc).__name__, exc)


# -- engines: load and run ------------------------------------------------------------------------------
_NUMPY_DTYPES: dict[
    str, np.dtype
] = {  # TensorRT DataType name → numpy; what numpy cannot hold (BF16, FP8, INT4, FP4, E8M0) is refused
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}


def numpy_dtype(dtype: trt.DataType, what: str) -> np.dtype:
    """numpy's dtype for a TensorRT tensor type (``trt.nptype`` raises on BF16/FP8/INT4/...: refused here)."""
    found = _NUMPY_DTYPES.get(dtype.name)
    if found is None:
        raise EngineBuildError(
            f"{what} is {dtype.name} in the engine, which numpy cannot hold; this backend serves "
            f"{', '.join(str(d) for d in _NUMPY_DTYPES.values())} tensors."
        )
    return found


@dataclass(frozen=True)
class EngineIO:
    """The engine's I/O tensors, checked against the bundle at load: names, order, numpy dtypes."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtypes: Mapping[str, np.dtype]


def inspect_io(
    engine: trt.ICudaEngine, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> EngineIO:
    """Check the engine's I/O against the bundle, so a mismatch is refused at load, not at the first request
    (a dtype mismatch would copy the wrong number of bytes)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    for kind, have, specs in (("inputs", ins, inputs), ("outputs", outs, outputs)):
        want = {s.name for s in specs}
        if set(have) != want:
            raise EngineBuildError(
                f"The engine's {kind} ({', '.join(sorted(have)) or 'none'}) are not the bundle's "
                f"({', '.join(sorted(want))}): it was built from another model."
            )
    dtypes: dict[str, np.dtype] = {}
    for kind, specs in (("Input", inputs), ("Output", outputs)):
        for spec in specs:
            have_dtype = numpy_dtype(engine.get_tensor_dtype(spec.name), f"{kind} {spec.name!r}")
            want_dtype = np.dtype(spec.dtype)
            if have_dtype != want_dtype:
                raise EngineBuildError(
                    f"{kind} {spec.name!r} is {have_dtype} in the engine but {want_dtype} in the bundle "
                    f"({have_dtype.itemsize} vs {want_dtype.itemsize} bytes per element)."
                )
            rank = len(engine.get_tensor_shape(spec.name))
            if rank != len(spec.shape):
                raise EngineBuildError(
                    f"{kind} {spec.name!r} has {rank} dimensions in the engine but {len(spec.shape)} in the bundle."
                )
            dtypes[spec.name] = have_dtype
    return EngineIO(tuple(s.name for s in inputs), tuple(s.name for s in outputs), dtypes)


def check_output_shapes(
    context: trt.IExecutionContext, io: EngineIO, inputs: Sequence[TensorSpec], batch: BatchProfile
) -> None:
    """With every input at the profile's OPT shape, every output shape must be known: a -1 left means a
    data-dependent shape (NonZero, NMS...), which needs an output allocator this backend does not have."""
    for spec in inputs:
        shape = spec.concrete_shape(batch.opt)
        if not context.set_input_shape(spec.name, shape):
            raise EngineBuildError(
                f"The engine refuses input {spec.name!r} at shape {list(shape)}: its optimization profile "
                f"is not the bundle's batch profile {batch}."
            )
    for name in io.outputs:
        dims = context.get_tensor_shape(name)
        out_shape = [dims[i] for i in range(len(dims))]
        if any(d < 0 for d in out_shape):
            raise EngineBuildError(
                f"Output {name!r} has a data-dependent shape ({out_shape} with every input shape set); this "
                "backend serves outputs whose shape follows from the inputs."
            )


class TensorRTEngine:
    """A deserialized plan checked against the bundle, with one execution context and one CudaStreamRunner
    (its own CUDA stream and device buffers) per request slot: ``slots`` requests run at once on the same
    engine, each on its own context and stream (TensorRT's way to run one engine concurrently)."""

    def __init__(
        self,
        engine: trt.ICudaEngine,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        batch: BatchProfile,
        cuda_graph: bool = False,
        runner: CudaStreamRunner | None = None,
        keep: object = None,
        slots: int = 1,
        runners: Sequence[CudaStreamRunner] | None = None,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.io = inspect_io(engine, inputs, outputs)
        if runners is not None:
            slots = len(runners)
        contexts: list[trt.IExecutionContext] = []
        for i in range(max(slots, 1)):
            mark = TENSORRT_ERRORS.mark()
            context: trt.IExecutionContext | None = engine.create_execution_context()  # None on failure
            if context is None:
                which = f" {i + 1} of {slots}" if slots > 1 else ""
                raise EngineLoadTransient(
                    f"TensorRT could not create an execution context{which} (out of GPU memory?)"
                    f"{TENSORRT_ERRORS.suffix(mark)}."
                )
            if i == 0:
                check_output_shapes(context, self.io, inputs, batch)
            contexts.append(context)
        self.engine: trt.ICudaEngine | None = engine
        self._keep = keep  # the trt.Runtime: it must outlive the engine
        if runners is None:
            first = runner if runner is not None else CudaStreamRunner(cuda_graph=cuda_graph)
            runners = [first, *(CudaStreamRunner(cuda_graph=cuda_graph) for _ in contexts[1:])]
        self._slots: list[tuple[trt.IExecutionContext | None, CudaStreamRunner]] = list(
            zip(contexts, runners, strict=True)
        )
        # Slot 0 as one-context callers knew it.
        self.context: trt.IExecutionContext | None = contexts[0]
        self.runner = self._slots[0][1]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(self._slots)):
            self._free.put(i)
        self._lock = threading.Lock()  # close() against infer()

    @property
    def slots(self) -> int:
        return len(self._slots)

    @staticmethod
    def _enqueue_on(context: trt.IExecutionContext | None, stream: int) -> bool:
        if context is None:
            raise InferenceError("The engine is closed.")
        mark = TENSORRT_ERRORS.mark()
        if context.execute_async_v3(stream):
            return True
        raise InferenceError(f"TensorRT could not enqueue the inference{TENSORRT_ERRORS.suffix(mark)}.")

    def _enqueue(self, stream: int) -> bool:
        return self._enqueue_on(self.context, stream)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a free slot (context + stream); waits for one when every slot is busy."""
        slot = self._free.get()
        try:
            return self._infer_on(slot, feeds)
        finally:
            self._free.put(slot)

    def _infer_on(self, slot: int, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, runner = self._slots[slot]
        if context is None or self.engine is None:
            raise InferenceError("The engine is closed.")
        host_in: dict[str, np.ndarray] = {}
        for name in self.io.inputs:
            arr = np.ascontiguousarray(feeds[name])
            if arr.dtype != self.io.dtypes[name]:
                raise InputError(f"Input {name!r} has dtype {arr.dtype}, expected {self.io.dtypes[name]}.")
            if not context.set_input_shape(name, arr.shape):
                raise InputError(
                    f"Input {name!r} has shape {list(arr.shape)}, outside the engine's optimization profile."
                )
            host_in[name] = arr
        host_out: dict[str, np.ndarray] = {}
        for name in self.io.outputs:
            dims = context.get_tensor_shape(name)
            shape = tuple(dims[i] for i in range(len(dims)))
            if any(d < 0 for d in shape):
                raise InferenceError(f"Output {name!r} has no known shape ({list(shape)}) for these inputs.")
            host_out[name] = np.empty(shape, dtype=self.io.dtypes[name])
        # Size every buffer first (growing one drops a captured graph), then bind the final addresses.
        pointers = {n: runner.buffer(n, a.nbytes) for n, a in (host_in | host_out).items()}
        for name, ptr in pointers.items():
            if not context.set_tensor_address(name, ptr):
                raise InferenceError(f"TensorRT refused the device address of tensor {name!r}.")
        for name, arr in host_in.items():
            runner.upload(pointers[name], arr)
        runner.execute(functools.partial(self._enqueue_on, context), tuple(a.shape for a in host_in.values()))
        for name, arr in host_out.items():
            runner.download(arr, pointers[name])
        runner.synchronize()
        return host_out

    def close(self) -> None:
        """Wait for every slot to be free, then release the streams, contexts and engine."""
        with self._lock:
            taken = [self._free.get() for _ in self._slots]
            for _, runner in self._slots:
                runner.close()
            self._slots = [(None, runner) for _, runner in self._slots]
            self.context = None
            self.engine = None
            self._keep = None
            for i in taken:
                self._free.put(i)


# -- the backend ----------------------------------------------------------------------------------------
class TensorRTBackend:
    name = "tensorrt"
    engine_suffix = ".plan"
    # Part of the engine cache key (cache.engine_key): bump it whenever the way engines are built changes
    # (flags, network typing, profiles), so engines built the old way are missed, not loaded.
    build_recipe = "trt-2"

    def require(self) -> None:
        """Raise BackendUnavailable (one sentence) unless TensorRT imports and CUDA sees a GPU."""
        version = trt.__version__
        from edge_runtime.device import cuda_runtime

        cudart = cuda_runtime()
        if cudart is None:
            raise BackendUnavailable(
                no_gpu_sentence(version, "cuda-python is not installed, so CUDA cannot be asked")
            )
        try:
            err, count = cudart.cudaGetDeviceCount()
        except Exception as exc:
            raise BackendUnavailable(
                no_gpu_sentence(version, f"cudaGetDeviceCount raised {type(exc).__name__}")
            ) from None
        if int(err) != 0:
            raise BackendUnavailable(no_gpu_sentence(version, cuda_error_name(err)))
        if int(count) < 1:
            raise BackendUnavailable(no_gpu_sentence(version, "CUDA counts 0 devices"))

    def version(self) -> str:
        return str(trt.__version__)

    def gpu(self) -> tuple[str, str] | None:
        from edge_runtime.device import cuda_gpu

        return cuda_gpu()

    def plan(self, bundle: ModelBundle, options: BuildOptions) -> BuildRecipe:
        """What ``build`` will do for this bundle and TensorRT version; refusals come from here."""
        return plan_build(bundle, options.precision, tensorrt_version())

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        version = tensorrt_version()
        recipe = self.plan(bundle, options)  # refusals (e.g. implicit INT8 on 11) before any native call
        calibrator = entropy_calibrator(bundle, options) if recipe.calibrate else None
        log.info("TensorRT %s build: %s", version, recipe.describe())
        logger = tensorrt_logger()
        mark = TENSORRT_ERRORS.mark()
        try:
            builder = _create_builder(logger)
            network = builder.create_network(network_flags(recipe, version))
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(recipe.source)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise EngineBuildError(
                    f"TensorRT {version} could not parse {recipe.source.name}: {' '.join(errors.split()) or 'no reason given'}."
                )
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
            if (
                config.add_optimization_profile(optimization_profile(builder, bundle.inputs, options.batch))
                < 0
            ):
                raise EngineBuildError(
                    f"TensorRT refused the optimization profile for batch {options.batch}"
                    f"{_ranges_note(bundle.inputs)}{TENSORRT_ERRORS.suffix(mark)}."
                )
            for flag in recipe.flags:
                config.set_flag(weak_typing_flag(flag))
            if calibrator is not None:
                attach_calibrator(builder, config, calibrator, bundle.inputs)
            timing = _attach_timing_cache(config, options.timing_cache) if options.timing_cache else None
            plan: trt.IHostMemory | None = builder.build_serialized_network(
                network, config
            )  # None on failure
            if plan is None:
                raise EngineBuildError(
                    f"TensorRT {version} could not build the engine ({recipe.describe()}){TENSORRT_ERRORS.suffix(mark)}."
                )
            if timing is not None and options.timing_cache is not None:
                _save_timing_cache(config, options.timing_cache)
            return bytes(memoryview(plan))
        finally:
            if calibrator is not None:
                calibrator.release()

    def load(self, engine: bytes, bundle: ModelBundle, options: BuildOptions) -> TensorRTEngine:
        logger = tensorrt_logger()
        mark = TENSORRT_ERRORS.mark()
        runtime = _create_runtime(logger)
        cuda_engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(engine)  # None on failure
        if cuda_engine is None:
            said = TENSORRT_ERRORS.since(mark)
            if _looks_transient(said):
                raise EngineLoadTransient(
                    f"TensorRT ran out of GPU memory loading the cached engine{TENSORRT_ERRORS.suffix(mark)}."
                )
            raise EngineBuildError(
                f"TensorRT {trt.__version__} could not deserialize the cached engine (built by another "
                f"version, or damaged){TENSORRT_ERRORS.suffix(mark)}."
            )
        return TensorRTEngine(
            cuda_engine,
            bundle.inputs,
            bundle.outputs,
            options.batch,
            options.cuda_graph,
            keep=runtime,
            slots=options.slots,
        )
