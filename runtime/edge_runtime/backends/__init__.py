"""Backends behind one protocol (see ``base``); heavy libraries are imported only when a backend is used."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_runtime.backends.base import Backend, BuildOptions, Engine, check_feeds
from edge_runtime.errors import BackendUnavailable, EdgeError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class BackendChoice:
    """Which backend serves, what was asked for, and why: a robot that should run TensorRT and fell back
    to ONNX Runtime on the CPU must be able to say so (``/readyz``, ``/metrics``, the fleet's gate)."""

    backend: Backend
    requested: str  # auto, onnxruntime or tensorrt
    reason: str  # one sentence: why this backend serves

    @property
    def fallback(self) -> str | None:
        """The sentence that kept ``auto`` off TensorRT; None when nothing was fallen back from."""
        return self.reason if self.requested == "auto" and self.backend.name != "tensorrt" else None


def select_backend(name: str = "auto") -> BackendChoice:
    """The named backend with the reason it was chosen; ``auto`` takes TensorRT where it imports and a GPU
    is present, else ONNX Runtime, keeping TensorRT's own sentence for why not."""
    if name == "onnxruntime":
        from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

        return BackendChoice(OnnxRuntimeBackend(), name, "ONNX Runtime was asked for.")
    if name == "tensorrt":
        from edge_runtime.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend()
        backend.require()
        return BackendChoice(backend, name, "TensorRT was asked for and is usable.")
    if name == "auto":
        try:
            chosen = select_backend("tensorrt").backend
            reason = "TensorRT imports and a GPU is present."
        except BackendUnavailable as exc:
            chosen = select_backend("onnxruntime").backend
            reason = " ".join(str(exc).split()) or "TensorRT is not usable here."
        log.info("backend auto → %s (%s)", chosen.name, reason)
        return BackendChoice(chosen, name, reason)
    raise EdgeError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")


def get_backend(name: str = "auto") -> Backend:
    """Return the named backend (``select_backend`` without the reason)."""
    return select_backend(name).backend


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "BuildOptions",
    "Engine",
    "check_feeds",
    "get_backend",
    "select_backend",
]
