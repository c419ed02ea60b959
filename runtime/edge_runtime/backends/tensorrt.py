"""TensorRT backend: ONNX → serialized plan on the robot's own GPU, and a runtime on a CUDA stream.

Written against the TensorRT 10.x Python API, with the TensorRT 8.5/8.6 (JetPack 5) spellings where the
API changed (workspace limit, network flags, I/O by bindings vs named tensors). TensorRT cannot be
installed on our development and CI machines, so this module is NOT exercised there: it imports
``tensorrt`` and cuda-python (``cuda.cudart``) lazily and ``require()`` fails with one clear sentence
where either, or a GPU, is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import Version

from edge_runtime.backends.base import BuildOptions
from edge_runtime.bundle import ModelBundle, TensorSpec
from edge_runtime.errors import BackendUnavailable, EngineBuildError

log = logging.getLogger(__name__)


def _trt() -> Any:
    try:
        import tensorrt
    except Exception as exc:
        raise BackendUnavailable(f"The tensorrt backend needs the TensorRT Python package ({exc}).") from None
    return tensorrt


def _cudart() -> Any:
    try:
        from cuda import cudart  # cuda-python ≤ 12.x spelling
    except Exception:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python 13
        except Exception as exc:
            raise BackendUnavailable(
                f"The tensorrt backend needs cuda-python for CUDA streams ({exc})."
            ) from None
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (err, value...) tuples; turn a non-zero err into EngineBuildError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineBuildError(f"CUDA call {what} failed with error {int(err)}.")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


class _Logger:
    """One trt.Logger per process (TensorRT warns when several are created)."""

    instance: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.instance is None:
            trt = _trt()
            cls.instance = trt.Logger(trt.Logger.WARNING)
        return cls.instance


def _make_calibrator(trt: Any, bundle: ModelBundle, options: BuildOptions) -> Any:
    """An IInt8EntropyCalibrator2 fed from the bundle's calibration npz, with its cache file."""
    cudart = _cudart()
    data_path = bundle.calibration_path("data")
    cache_path = options.calibration_cache or bundle.calibration_path("cache")
    has_data = data_path is not None and data_path.is_file()
    if not has_data and (cache_path is None or not Path(cache_path).is_file()):
        raise EngineBuildError(
            "INT8 needs calibration data or a calibration cache in the bundle; it has neither."
        )
    batches: dict[str, np.ndarray] = {}
    if data_path is not None and data_path.is_file():
        with np.load(data_path) as npz:
            batches = {s.name: np.ascontiguousarray(npz[s.name].astype(s.dtype)) for s in bundle.inputs}
    batch_size = options.batch.opt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.total = min((len(a) for a in batches.values()), default=0)
            self.device: dict[str, int] = {}
            for name, arr in batches.items():
                nbytes = arr[:batch_size].nbytes
                self.device[name] = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + batch_size > self.total:
                return None
            ptrs = []
            for name in names:
                chunk = np.ascontiguousarray(batches[name][self.index : self.index + batch_size])
                _check(
                    cudart.cudaMemcpy(
                        self.device[name],
                        chunk.ctypes.data,
                        chunk.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    ),
                    "cudaMemcpy",
                )
                ptrs.append(self.device[name])
            self.index += batch_size
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and Path(cache_path).is_file():
                log.info("INT8: reusing calibration cache %s", cache_path)
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None and options.calibration_cache is not None:
                Path(cache_path).write_bytes(bytes(cache))

        def __del__(self) -> None:
            for ptr in self.device.values():
                cudart.cudaFree(ptr)

    return EntropyCalibrator()


class TensorRTEngine:
    """A deserialized plan with one execution context and device buffers on a private CUDA stream."""

    def __init__(
        self, engine: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], cuda_graph: bool
    ) -> None:
        self.trt = _trt()
        self.cudart = _cudart()
        self.engine = engine
        self.context = engine.create_execution_context()
        self.inputs = inputs
        self.outputs = outputs
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.use_v3 = hasattr(self.context, "execute_async_v3")  # TensorRT ≥ 8.5
        self.cuda_graph = cuda_graph and self.use_v3
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device ptr, capacity bytes)
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}  # input shapes → instantiated CUDA graph
        # Names, binding indices and output dtypes are fixed by the plan: looked up once, not per call.
        self.in_names, self.out_names = self._io_names()
        self._index = (
            {} if self.use_v3 else {n: engine.get_binding_index(n) for n in self.in_names + self.out_names}
        )
        self._out_dtypes = {
            n: np.dtype(
                self.trt.nptype(
                    engine.get_tensor_dtype(n) if self.use_v3 else engine.get_binding_dtype(self._index[n])
                )
            )
            for n in self.out_names
        }

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self.cudart.cudaFree(ptr)
            ptr = _check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self._buffers[name] = (ptr, nbytes)
            self._drop_graphs()  # captured graphs hold the old addresses
        return ptr

    def _drop_graphs(self) -> None:
        for graph_exec in self._graphs.values():
            self.cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs.clear()

    def _io_names(self) -> tuple[list[str], list[str]]:
        trt = self.trt
        if hasattr(self.engine, "num_io_tensors"):
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            return ins, [n for n in names if n not in ins]
        names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]  # TensorRT < 8.5
        return [n for n in names if self.engine.binding_is_input(n)], [
            n for n in names if not self.engine.binding_is_input(n)
        ]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        in_names, out_names = self.in_names, self.out_names
        host_in = {n: np.ascontiguousarray(feeds[n]) for n in in_names}
        bindings: list[int] = []
        for name in in_names:
            arr = host_in[name]
            ptr = self._device_buffer(name, arr.nbytes)
            if self.use_v3:
                self.context.set_input_shape(name, arr.shape)
                self.context.set_tensor_address(name, ptr)
            else:
                self.context.set_binding_shape(self._index[name], arr.shape)
            _check(
                cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream), "cudaMemcpyAsync"
            )
        host_out: dict[str, np.ndarray] = {}
        for name in out_names:
            if self.use_v3:
                shape = tuple(self.context.get_tensor_shape(name))
            else:
                shape = tuple(self.context.get_binding_shape(self._index[name]))
            host_out[name] = np.empty(shape, dtype=self._out_dtypes[name])
            ptr = self._device_buffer(name, host_out[name].nbytes)
            if self.use_v3:
                self.context.set_tensor_address(name, ptr)
        if self.use_v3:
            self._enqueue_v3(tuple(a.shape for a in host_in.values()))
        else:
            for name in in_names + out_names:
                bindings.append(self._buffers[name][0])
            if not self.context.execute_async_v2(bindings, self.stream):
                raise EngineBuildError("TensorRT execute_async_v2 failed.")
        for name, arr in host_out.items():
            _check(
                cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes, d2h, self.stream),
                "cudaMemcpyAsync",
            )
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out

    def _enqueue_v3(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """Run the context; with cuda_graph, capture once per input shape and replay the graph after."""
        cudart = self.cudart
        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream):
                raise EngineBuildError("TensorRT execute_async_v3 failed.")
            return
        graph_exec = self._graphs.get(shapes)
        if graph_exec is None:
            # TensorRT needs one ordinary enqueue after a shape change before it can be captured.
            self.context.execute_async_v3(self.stream)
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            _check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            self.context.execute_async_v3(self.stream)
            graph = _check(cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            try:
                graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            finally:
                cudart.cudaGraphDestroy(graph)  # the instantiated executable keeps what it needs
            self._graphs[shapes] = graph_exec
        _check(cudart.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        self._drop_graphs()  # graphs first: they point into the buffers
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None
        self.engine = None


def source_model(bundle: ModelBundle, precision: str) -> tuple[Path, bool]:
    """Which ONNX file TensorRT should parse, and whether it carries its own INT8 scales (Q/DQ nodes).

    A Q/DQ model is built as is (explicit quantization, what TensorRT 10 recommends); an INT8 bundle
    without Q/DQ, and FP16 bundles, are built from the FP32 model where the bundle keeps one, so TensorRT
    picks per-layer precision itself (INT8 scales then come from the calibrator and its cache).
    """
    quant = bundle.manifest.quantization or {}
    fp32 = quant.get("fp32_model")
    if precision == "int8" and str(quant.get("format", "")).upper() == "QDQ":
        return bundle.model_path, True
    if precision in ("int8", "fp16") and fp32 and (bundle.path / fp32).is_file():
        return bundle.path / fp32, False
    return bundle.model_path, False


class TensorRTBackend:
    name = "tensorrt"
    engine_suffix = ".plan"

    def require(self) -> None:
        """Raise BackendUnavailable unless TensorRT imports and CUDA sees a GPU."""
        _trt()
        cudart = _cudart()
        try:
            err, count = cudart.cudaGetDeviceCount()
        except Exception as exc:
            raise BackendUnavailable(f"CUDA is not usable here ({exc}).") from None
        if int(err) != 0 or count < 1:
            raise BackendUnavailable("TensorRT imports but CUDA reports no GPU.")

    def version(self) -> str:
        return str(_trt().__version__)

    def gpu(self) -> tuple[str, str] | None:
        from edge_runtime.device import cuda_gpu

        return cuda_gpu()

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        trt = _trt()
        logger = _Logger.get()
        v = Version(trt.__version__)
        builder = trt.Builder(logger)
        # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
        flags = 0 if v.major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        source, explicit_int8 = source_model(bundle, options.precision)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT could not parse {source.name}: {errors or 'unknown error'}.")
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        else:  # TensorRT < 8.4
            config.max_workspace_size = options.workspace_bytes

        profile = builder.create_optimization_profile()
        for spec in bundle.inputs:
            lo, opt, hi = (
                spec.concrete_shape(b) for b in (options.batch.min, options.batch.opt, options.batch.max)
            )
            profile.set_shape(spec.name, lo, opt, hi)
        config.add_optimization_profile(profile)

        if options.precision in ("fp16", "int8"):
            if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10
                log.warning("this GPU has no fast FP16; TensorRT may fall back to FP32 kernels")
            config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if not explicit_int8:  # implicit quantization: scales come from the entropy calibrator
                config.int8_calibrator = _make_calibrator(trt, bundle, options)
                if hasattr(config, "set_calibration_profile"):
                    config.set_calibration_profile(profile)

        timing_cache = None
        if options.timing_cache is not None:
            blob = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
            timing_cache = config.create_timing_cache(blob)
            config.set_timing_cache(timing_cache, ignore_mismatch=False)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineBuildError("TensorRT failed to build the engine (see the TensorRT log above).")
        if timing_cache is not None and options.timing_cache is not None:
            _save_timing_cache(config.get_timing_cache(), options.timing_cache)
        return bytes(plan)

    def load(self, engine: bytes, bundle: ModelBundle, options: BuildOptions) -> TensorRTEngine:
        trt = _trt()
        runtime = trt.Runtime(_Logger.get())
        cuda_engine = runtime.deserialize_cuda_engine(engine)
        if cuda_engine is None:
            raise EngineBuildError(
                "TensorRT could not deserialize the cached engine (built by another version?)."
            )
        return TensorRTEngine(cuda_engine, bundle.inputs, bundle.outputs, options.cuda_graph)


def _save_timing_cache(cache: Any, path: Path) -> None:
    """Atomic replace, so a concurrent reader of the shared timing cache never sees half a file."""
    import os

    data = bytes(memoryview(cache.serialize()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
