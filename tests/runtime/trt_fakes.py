"""Test doubles for TensorRT's NATIVE objects (builder, config, engine, context), answering with the real
module's enums, flags and Dims where the real bindings are loaded (the contract tests' subprocess).

The stand-in libraries make the first native call fail (``trt.Builder(logger)``), so these stand where the
native objects would: they record what the backend asks of them and answer as TensorRT documents. They
prove the calls and values our code makes, not what TensorRT does with them.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np


# -- timing cache (no TensorRT needed) -------------------------------------------------------------------
class FakeTimingCache:
    """An ITimingCache whose entries are names, serialized as JSON."""

    def __init__(self, entries: set[str], combine_delay: float = 0.0) -> None:
        self.entries = set(entries)
        self.combine_delay = combine_delay

    def combine(self, other: FakeTimingCache, ignore_mismatch: bool) -> bool:
        import time

        time.sleep(self.combine_delay)  # widens the read-merge-write window two writers could race in
        self.entries |= other.entries
        return True

    def serialize(self) -> memoryview:
        return memoryview(json.dumps(sorted(self.entries)).encode())


class FakeBuilderConfig:
    """The IBuilderConfig timing-cache calls: create (a corrupt blob → None, as TensorRT answers), set, get."""

    def __init__(self, entries: Sequence[str] = (), combine_delay: float = 0.0) -> None:
        self.built = FakeTimingCache(set(entries), combine_delay)
        self.attached: FakeTimingCache | None = None

    def create_timing_cache(self, blob: bytes) -> FakeTimingCache | None:
        try:
            return FakeTimingCache(set(json.loads(bytes(blob)))) if blob else FakeTimingCache(set())
        except ValueError:
            return None

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.attached = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache:
        return self.built


def read_device(ptr: int, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Copy an array out of (host stand-in) device memory."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dt).reshape(tuple(shape)).copy()


def write_device(ptr: int, arr: np.ndarray) -> None:
    data = np.ascontiguousarray(arr)
    ctypes.memmove(ptr, data.ctypes.data, data.nbytes)


# -- build side (needs the real tensorrt module) ---------------------------------------------------------
class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        import tensorrt as trt

        for dims in (lo, opt, hi):
            assert isinstance(dims, trt.Dims), f"set_shape got {type(dims).__name__}, not trt.Dims"
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeConfig(FakeBuilderConfig):
    """IBuilderConfig: records pools, profiles, flags and the calibrator; type-checks against the real enums."""

    def __init__(self) -> None:
        super().__init__(("fresh-tactic",))
        self.pools: dict[Any, int] = {}
        self.profiles: list[FakeProfile] = []
        self.flags: list[Any] = []
        self.calibration_profile: FakeProfile | None = None
        self.int8_calibrator: Any = None
        self.refuse_profile = False

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        import tensorrt as trt

        assert isinstance(pool, trt.MemoryPoolType)
        self.pools[pool] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        if self.refuse_profile:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag: Any) -> None:
        import tensorrt as trt

        assert isinstance(flag, trt.BuilderFlag), f"set_flag got {flag!r}"
        self.flags.append(flag)

    def set_calibration_profile(self, profile: FakeProfile) -> bool:
        self.calibration_profile = profile
        return True


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags


class FakeParser:
    """trt.OnnxParser(network, logger): records the file; ``errors`` makes the parse fail."""

    errors: ClassVar[list[str]] = []
    parsed: ClassVar[list[str]] = []

    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        import tensorrt as trt

        assert isinstance(logger, trt.ILogger)
        self.network = network

    def parse_from_file(self, path: str) -> bool:
        FakeParser.parsed.append(path)
        return not FakeParser.errors

    @property
    def num_errors(self) -> int:
        return len(FakeParser.errors)

    def get_error(self, i: int) -> str:
        return FakeParser.errors[i]


class FakeBuilder:
    """trt.Builder: hands out network/config/profiles; ``build_serialized_network`` runs an attached INT8
    calibrator the way TensorRT does (cache first, then batches until None, then the new cache)."""

    def __init__(self, input_specs: Sequence[Any], error: str | None = None) -> None:
        self.input_specs = list(input_specs)
        self.error = error
        self.network: FakeNetwork | None = None
        self.config: FakeConfig | None = None
        self.calibration_batches: list[dict[str, np.ndarray]] = []
        self.calibration_cache_read: bytes | None = None

    def create_network(self, flags: int) -> FakeNetwork:
        assert type(flags) is int
        self.network = FakeNetwork(flags)
        return self.network

    def create_builder_config(self) -> FakeConfig:
        self.config = FakeConfig()
        return self.config

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        import warnings

        import tensorrt as trt

        from edge_runtime.backends.tensorrt import tensorrt_logger

        calibrator = config.int8_calibrator
        if calibrator is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # get_batch_size is deprecated in 10.x
                assert trt.IInt8Calibrator.get_batch_size(calibrator) == 1  # through the C++ binding
            assert calibrator.get_algorithm() == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2
            self.calibration_cache_read = calibrator.read_calibration_cache()
            names = [s.name for s in self.input_specs]
            assert config.calibration_profile is not None
            while pointers := calibrator.get_batch(names):
                batch = {}
                for spec, ptr in zip(self.input_specs, pointers, strict=True):
                    shape = config.calibration_profile.shapes[spec.name][1]
                    batch[spec.name] = read_device(ptr, shape, spec.dtype)
                self.calibration_batches.append(batch)
            calibrator.write_calibration_cache(memoryview(b"TRT-calibration-written-by-the-build"))
        if self.error:
            tensorrt_logger().log(trt.ILogger.Severity.ERROR, self.error)
            return None
        return b"serialized plan"


# -- load side -------------------------------------------------------------------------------------------
class FakeContext:
    """IExecutionContext over host stand-in memory: ``execute_async_v3`` launches one 'kernel' on the
    stream that computes the outputs with ``compute`` from the bound input bytes (captured addresses and
    shapes, as a CUDA graph keeps them)."""

    def __init__(self, engine: FakeCudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.enqueues = 0

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        batch = int(shape[0])
        if not self.engine.batch[0] <= batch <= self.engine.batch[1]:
            return False
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name: str) -> Any:
        import tensorrt as trt

        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        spec = self.engine.specs[name]
        dims = [batch if isinstance(d, str) else d for d in spec.shape]
        if name in self.engine.data_dependent:
            dims[-1] = -1
        return trt.Dims(dims)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert type(stream) is int
        self.enqueues += 1
        ins = {n: (self.addresses[n], self.shapes[n]) for n in self.engine.inputs}
        outs = {n: self.addresses[n] for n in self.engine.outputs}

        def kernel() -> None:
            feeds = {
                n: read_device(ptr, shape, self.engine.specs[n].dtype) for n, (ptr, shape) in ins.items()
            }
            for name, value in self.engine.compute(feeds).items():
                write_device(outs[name], value.astype(self.engine.specs[name].dtype))

        self.engine.cudart.launch(stream, kernel)
        return True


class FakeCudaEngine:
    """ICudaEngine for a bundle's I/O, answering with the REAL TensorRT enums (TensorIOMode, DataType, Dims).

    ``dtypes`` overrides a tensor's TensorRT type name; ``rename`` an output's name; ``data_dependent`` lists
    outputs whose last dimension stays -1; ``no_context`` makes create_execution_context return None."""

    def __init__(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Any],
        batch: tuple[int, int],
        compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        cudart: Any = None,
        dtypes: dict[str, str] | None = None,
        rename: dict[str, str] | None = None,
        data_dependent: Sequence[str] = (),
        no_context: bool = False,
        ranks: dict[str, int] | None = None,
    ) -> None:
        rename = rename or {}
        self.specs = {s.name: s for s in [*inputs, *outputs]}
        self.inputs = [s.name for s in inputs]
        self.outputs = [rename.get(s.name, s.name) for s in outputs]
        for old, new in rename.items():
            self.specs[new] = self.specs[old]
        self.batch = batch
        self.compute = compute
        self.cudart = cudart
        self.dtypes = {
            "float32": "FLOAT",
            "float16": "HALF",
            "int64": "INT64",
            "int32": "INT32",
            "uint8": "UINT8",
            "bool": "BOOL",
        }
        self.overrides = dtypes or {}
        self.data_dependent = set(data_dependent)
        self.no_context = no_context
        self.ranks = ranks or {}

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return [*self.inputs, *self.outputs][i]

    def get_tensor_mode(self, name: str) -> Any:
        import tensorrt as trt

        return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        import tensorrt as trt

        return getattr(trt.DataType, self.overrides.get(name, self.dtypes[self.specs[name].dtype]))

    def get_tensor_shape(self, name: str) -> Any:
        import tensorrt as trt

        dims = [-1 if isinstance(d, str) else d for d in self.specs[name].shape]
        rank = self.ranks.get(name, len(dims))
        return trt.Dims((dims + [1] * rank)[:rank])

    def create_execution_context(self) -> FakeContext | None:
        return None if self.no_context else FakeContext(self)
