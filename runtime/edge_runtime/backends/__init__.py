"""Backends behind one protocol (see ``base``); heavy libraries are imported only when a backend is used."""

from __future__ import annotations

import logging

from edge_runtime.backends.base import Backend, BuildOptions, Engine, check_feeds
from edge_runtime.errors import BackendUnavailable, EdgeError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def get_backend(name: str = "auto") -> Backend:
    """Return the named backend; ``auto`` takes TensorRT where it imports and a GPU is present."""
    if name == "onnxruntime":
        from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tensorrt":
        from edge_runtime.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend()
        backend.require()
        return backend
    if name == "auto":
        try:
            chosen = get_backend("tensorrt")
            reason = "TensorRT imports and a GPU is present"
        except BackendUnavailable as exc:
            chosen = get_backend("onnxruntime")
            reason = f"TensorRT not usable here: {exc}"
        log.info("backend auto → %s (%s)", chosen.name, reason)
        return chosen
    raise EdgeError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "Backend", "BuildOptions", "Engine", "check_feeds", "get_backend"]
