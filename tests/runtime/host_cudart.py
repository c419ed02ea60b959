"""A host-memory STAND-IN for cuda-python's runtime module (``cuda.bindings.runtime``), for tests only.

Not CUDA: "device" memory is ctypes buffers in this process, copies are memmove, a stream runs its work at
once, and a stream under capture records work (``launch``) into a graph instead of running it, which a
graph launch replays with the addresses captured. That is enough to check how the TensorRT backend's CUDA
plumbing orders its calls (warm-up, synchronize, capture mode, fallbacks) and moves bytes, without a GPU.
The same runner code runs against the real module on an NVIDIA GPU in bench/tensorrt_cuda.py.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class cudaError_t(enum.IntEnum):  # cuda-python's names
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class Stream(int):
    """Like cuda-python's cudaStream_t: ``int(stream)`` is the handle TensorRT takes."""


@dataclass
class Graph:
    work: list[Callable[[], None]] = field(default_factory=list)


OK = cudaError_t.cudaSuccess


class HostCudart:
    """The subset of the CUDA runtime API the TensorRT backend calls, on host memory; ``calls`` records them."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self, devices: int = 1, fail: dict[str, cudaError_t] | None = None) -> None:
        self.devices = devices
        self.fail = dict(fail or {})  # call name → the error it returns
        self.calls: list[tuple[Any, ...]] = []
        self.memory: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.capturing: dict[int, Graph] = {}
        self.invalidate_capture = False  # the next capture ends with cudaErrorStreamCaptureInvalidated
        self._streams = 0
        self.graphs_alive = 0

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def _call(self, name: str, *args: Any) -> cudaError_t:
        self.calls.append((name, *args))
        return self.fail.get(name, OK)

    # -- device and memory ----------------------------------------------------------------------------
    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        return self._call("cudaGetDeviceCount"), self.devices

    def cudaMalloc(self, nbytes: int) -> tuple[cudaError_t, int]:
        err = self._call("cudaMalloc", nbytes)
        if err != OK:
            return err, 0
        buf = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def cudaFree(self, ptr: int) -> tuple[cudaError_t]:
        self.memory.pop(ptr)  # KeyError on a double free or a foreign pointer
        return (self._call("cudaFree", ptr),)

    def _check_device(self, ptr: int, nbytes: int) -> None:
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return
        raise AssertionError(f"{nbytes} bytes at {ptr:#x} are not inside one device allocation")

    def _copy(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind) -> None:
        if kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            self._check_device(dst, nbytes)
        if kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            self._check_device(src, nbytes)
        ctypes.memmove(dst, src, nbytes)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind) -> tuple[cudaError_t]:
        err = self._call("cudaMemcpy", nbytes, kind)
        if err == OK:
            self._copy(dst, src, nbytes, kind)
        return (err,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: Stream
    ) -> tuple[cudaError_t]:
        err = self._call("cudaMemcpyAsync", nbytes, kind)
        if err == OK:
            self.launch(int(stream), lambda: self._copy(dst, src, nbytes, kind))
        return (err,)

    # -- streams and graphs ---------------------------------------------------------------------------
    def cudaStreamCreate(self) -> tuple[cudaError_t, Stream | None]:
        err = self._call("cudaStreamCreate")
        if err != OK:
            return err, None
        self._streams += 1
        return OK, Stream(0x5000 + self._streams)

    def cudaStreamDestroy(self, stream: Stream) -> tuple[cudaError_t]:
        return (self._call("cudaStreamDestroy"),)

    def cudaStreamSynchronize(self, stream: Stream) -> tuple[cudaError_t]:
        return (self._call("cudaStreamSynchronize"),)

    def launch(self, stream: int, work: Callable[[], None]) -> None:
        """A kernel on ``stream``: run now, or recorded while the stream is being captured."""
        if stream in self.capturing:
            self.capturing[stream].work.append(work)
        else:
            work()

    def cudaStreamBeginCapture(self, stream: Stream, mode: cudaStreamCaptureMode) -> tuple[cudaError_t]:
        err = self._call("cudaStreamBeginCapture", mode)
        if err == OK:
            self.capturing[int(stream)] = Graph()
        return (err,)

    def cudaStreamEndCapture(self, stream: Stream) -> tuple[cudaError_t, Graph | None]:
        err = self._call("cudaStreamEndCapture")
        graph = self.capturing.pop(int(stream), None)
        if self.invalidate_capture:
            self.invalidate_capture = False
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        if err != OK or graph is None:
            return err if err != OK else cudaError_t.cudaErrorStreamCaptureInvalidated, None
        self.graphs_alive += 1
        return OK, graph

    def cudaGraphInstantiate(self, graph: Graph, flags: int) -> tuple[cudaError_t, Graph | None]:
        err = self._call("cudaGraphInstantiate")
        if err != OK:
            return err, None
        self.graphs_alive += 1
        return OK, Graph(list(graph.work))

    def cudaGraphDestroy(self, graph: Graph) -> tuple[cudaError_t]:
        self.graphs_alive -= 1
        return (self._call("cudaGraphDestroy"),)

    def cudaGraphExecDestroy(self, graph_exec: Graph) -> tuple[cudaError_t]:
        self.graphs_alive -= 1
        return (self._call("cudaGraphExecDestroy"),)

    def cudaGraphLaunch(self, graph_exec: Graph, stream: Stream) -> tuple[cudaError_t]:
        err = self._call("cudaGraphLaunch")
        if err == OK:
            for work in graph_exec.work:
                self.launch(int(stream), work)
        return (err,)

    def cudaGetLastError(self) -> tuple[cudaError_t]:
        return (self._call("cudaGetLastError"),)
