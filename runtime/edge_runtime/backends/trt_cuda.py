"""CUDA plumbing of the TensorRT backend: device buffers, one stream, async copies, CUDA graphs.

Kept apart from TensorRT on purpose: ``CudaStreamRunner`` takes the enqueue as a callable (for TensorRT,
``context.execute_async_v3``), so it runs on any NVIDIA GPU with cuda-python alone, and its graph logic can
be tested without TensorRT. cuda-python is imported through ``edge_runtime.device.cuda_runtime`` (13's
``cuda.bindings.runtime`` first, 12's ``cuda.cudart`` after) and stays untyped (``Any``).

CUDA graphs follow trtexec (``--useCudaGraph``): one checked warm-up enqueue for the current input shapes
(TensorRT does deferred work on the first enqueue after a shape change, which cannot be captured), a
synchronize, then a capture in thread-local mode (another thread's CUDA calls neither break nor join it).
A capture that fails is ended cleanly and that shape runs with plain enqueues from then on. A graph is
replayed only for the input shapes it was captured with; new shapes recapture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from edge_runtime.errors import EngineBuildError, EngineLoadTransient, InferenceError

log = logging.getLogger(__name__)

Enqueue = Callable[[int], bool]  # stream handle → whether the work was enqueued


def cuda_error_name(err: Any) -> str:
    """``cudaErrorNoDevice`` for a cuda-python error value (its enum name), else its number."""
    name = getattr(err, "name", None)
    return str(name) if name else f"CUDA error {int(err)}"


def cuda_ok(result: Any) -> tuple[bool, Any]:
    """Split a cuda-python ``(err, value...)`` tuple: (succeeded, value or tuple of values or None)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    value = rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)
    return int(err) == 0, value


def cuda_call(result: Any, what: str, error: type[Exception] = InferenceError) -> Any:
    """The value of a cuda-python call, or ``error`` with one sentence naming the call and the CUDA error."""
    ok, value = cuda_ok(result)
    if not ok:
        err = result[0] if isinstance(result, tuple) else result
        raise error(f"CUDA call {what} failed ({cuda_error_name(err)}).")
    return value


def require_cuda_runtime() -> Any:
    from edge_runtime.device import cuda_runtime

    cudart = cuda_runtime()
    if cudart is None:
        raise EngineLoadTransient(
            "The tensorrt backend needs cuda-python for its CUDA streams; it is not installed."
        )
    return cudart


class CudaStreamRunner:
    """Device buffers on one private stream, copies in and out, and the enqueue, optionally as a CUDA graph."""

    def __init__(self, cudart: Any | None = None, *, cuda_graph: bool = False) -> None:
        self.cudart = cudart if cudart is not None else require_cuda_runtime()
        # A stream that cannot be created (GPU memory, driver state) is no fault of the engine.
        self.stream: Any = cuda_call(self.cudart.cudaStreamCreate(), "cudaStreamCreate", EngineLoadTransient)
        self.cuda_graph = cuda_graph
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device pointer, capacity in bytes)
        self._graph: Any = None  # instantiated graph for ``_graph_key``
        self._graph_key: Hashable | None = None
        self._no_graph: set[Hashable] = set()  # shapes whose capture failed: plain enqueues
        self.captures = 0  # graphs captured so far (logs, tests)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    # -- memory -------------------------------------------------------------------------------------------
    def buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``; grows (and drops the graph) when too small."""
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap or not ptr:
            if ptr:
                self.cudart.cudaFree(ptr)
                del self._buffers[name]
            self.drop_graph()  # a captured graph holds the old addresses
            size = max(nbytes, 1)
            ptr = int(cuda_call(self.cudart.cudaMalloc(size), "cudaMalloc"))
            self._buffers[name] = (ptr, size)
        return ptr

    def upload(self, ptr: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(
            self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    def download(self, host: np.ndarray, ptr: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(
            self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    def synchronize(self) -> None:
        cuda_call(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    # -- execution ----------------------------------------------------------------------------------------
    def execute(self, enqueue: Enqueue, shapes: Hashable) -> None:
        """Enqueue the work for these input ``shapes``: plainly, by replaying its graph, or capturing one."""
        if not self.cuda_graph or shapes in self._no_graph:
            self._enqueue(enqueue)
            return
        if self._graph is not None and self._graph_key == shapes:
            cuda_call(self.cudart.cudaGraphLaunch(self._graph, self.stream), "cudaGraphLaunch")
            return
        self.drop_graph()  # captured for other shapes: never replayed for these
        self._enqueue(enqueue)  # warm-up: also produces this request's outputs
        self.synchronize()
        graph = self._capture(enqueue)
        if graph is None:
            self._no_graph.add(shapes)
            return
        self._graph, self._graph_key = graph, shapes
        self.captures += 1

    def _enqueue(self, enqueue: Enqueue) -> None:
        if not enqueue(self.stream_handle):
            raise InferenceError("The engine could not enqueue the inference on its CUDA stream.")

    def _capture(self, enqueue: Enqueue) -> Any:
        """Capture one enqueue into an instantiated graph; None (capture ended, stream usable) on failure."""
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        began, _ = cuda_ok(cudart.cudaStreamBeginCapture(self.stream, mode))
        if not began:
            cudart.cudaGetLastError()
            log.warning("CUDA graph capture could not begin; running these shapes without a graph")
            return None
        reason = ""
        try:
            enqueued = bool(enqueue(self.stream_handle))
        except Exception as exc:  # the capture must be ended whatever the enqueue did
            enqueued, reason = False, f"{type(exc).__name__}: {exc}"
        ended, graph = cuda_ok(cudart.cudaStreamEndCapture(self.stream))
        if not (enqueued and ended and graph is not None):
            if ended and graph is not None:
                cudart.cudaGraphDestroy(graph)
            cudart.cudaGetLastError()  # clear the capture's error so the next call on the stream is not blamed
            log.warning(
                "CUDA graph capture failed (%s); running these shapes with plain enqueues",
                reason
                or ("the enqueue failed during capture" if not enqueued else "cudaStreamEndCapture failed"),
            )
            return None
        try:
            instantiated, graph_exec = cuda_ok(cudart.cudaGraphInstantiate(graph, 0))
        finally:
            cudart.cudaGraphDestroy(graph)  # the instantiated executable keeps what it needs
        if not instantiated:
            cudart.cudaGetLastError()
            log.warning("CUDA graph could not be instantiated; running these shapes with plain enqueues")
            return None
        return graph_exec

    def drop_graph(self) -> None:
        if self._graph is not None:
            self.cudart.cudaGraphExecDestroy(self._graph)
        self._graph, self._graph_key = None, None

    def close(self) -> None:
        self.drop_graph()  # first: it points into the buffers
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


class CudaMemory:
    """Synchronous device allocations for the INT8 calibrator (TensorRT reads its batches from device memory)."""

    def __init__(self, cudart: Any | None = None) -> None:
        self.cudart = cudart if cudart is not None else require_cuda_runtime()

    def alloc(self, nbytes: int) -> int:
        return int(cuda_call(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc", EngineBuildError))

    def copy_in(self, ptr: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(
            self.cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy", EngineBuildError
        )

    def free(self, ptr: int) -> None:
        self.cudart.cudaFree(ptr)
