"""ONNX Runtime backend (CPU, or CUDA where the GPU package is installed).

Its "engine" is the session-optimized model serialized to bytes: building runs ONNX Runtime's graph
optimizations once; loading opens those bytes with optimizations off, so a warm start skips them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import BuildOptions
from edge_runtime.bundle import ModelBundle, TensorSpec
from edge_runtime.errors import BackendUnavailable, EngineBuildError


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"The onnxruntime backend needs the onnxruntime package ({exc}).") from None
    return onnxruntime


EXTERNAL_MARKER = b"edge-runtime onnxruntime: external-data model "


class OnnxRuntimeEngine:
    def __init__(self, session: Any, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self._output_names = [o.name for o in outputs]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    engine_suffix = ".ort.onnx"

    def __init__(self, providers: list[str] | None = None) -> None:
        self.providers = providers or ["CPUExecutionProvider"]

    def version(self) -> str:
        return str(_ort().__version__)

    def _options(self, options: BuildOptions, optimize: bool) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if options.intra_op_threads:
            so.intra_op_num_threads = options.intra_op_threads
        if options.inter_op_threads:
            so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin_wait else "0")
        return so

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        ort = _ort()
        if bundle.manifest.model_data:
            # Weights in external data cannot travel inside one serialized model (2 GB protobuf limit):
            # the "engine" names the bundle's model, and loading optimizes it from its path each start.
            self._session(bundle, options, optimize=True)
            return EXTERNAL_MARKER + bundle.manifest.model_file.encode()
        with tempfile.TemporaryDirectory(prefix="edge-ort-") as tmp:
            out = Path(tmp) / "optimized.onnx"
            so = self._options(options, optimize=True)
            so.optimized_model_filepath = os.fspath(out)
            try:
                ort.InferenceSession(os.fspath(bundle.model_path), sess_options=so, providers=self.providers)
                return out.read_bytes()
            except Exception as exc:  # onnxruntime raises its own exception types
                raise EngineBuildError(
                    f"ONNX Runtime could not optimize {bundle.model_path.name}: {exc}"
                ) from None

    def _session(self, bundle: ModelBundle, options: BuildOptions, optimize: bool) -> Any:
        try:
            return _ort().InferenceSession(
                os.fspath(bundle.model_path),
                sess_options=self._options(options, optimize=optimize),
                providers=self.providers,
            )
        except Exception as exc:
            raise EngineBuildError(f"ONNX Runtime could not load {bundle.model_path.name}: {exc}") from None

    def load(self, engine: bytes, bundle: ModelBundle, options: BuildOptions) -> OnnxRuntimeEngine:
        ort = _ort()
        if engine.startswith(EXTERNAL_MARKER):
            return OnnxRuntimeEngine(
                self._session(bundle, options, optimize=True), bundle.inputs, bundle.outputs
            )
        try:
            session = ort.InferenceSession(
                engine, sess_options=self._options(options, optimize=False), providers=self.providers
            )
        except Exception as exc:
            raise EngineBuildError(f"ONNX Runtime could not load the cached engine: {exc}") from None
        return OnnxRuntimeEngine(session, bundle.inputs, bundle.outputs)
