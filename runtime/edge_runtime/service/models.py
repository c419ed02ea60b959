"""One served model of the repository: its bundle, engine, request slots, readiness and labelled metrics.

``InferenceService`` holds one per model (one for a single bundle) and does the checks every request
shares (draining, watchdog, thermal); this class only runs the engine within its slots.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.backends import Engine
from edge_runtime.bundle import BatchProfile, ModelBundle, TensorSpec
from edge_runtime.cache import CachedEngine
from edge_runtime.errors import RequestError
from edge_runtime.repository import Pipeline
from edge_runtime.service.metrics import ServiceMetrics


class ServedModel:
    """A model and its engine. ``slots`` inferences run at once (ONNX Runtime: concurrent ``run()`` on one
    session; TensorRT: one execution context and stream each); more wait for a free slot."""

    kind = "model"

    def __init__(self, name: str, bundle: ModelBundle, slots: int, metrics: ServiceMetrics) -> None:
        self.name = name
        self.bundle = bundle
        self.slots = slots
        self.cached: CachedEngine | None = None
        self.engine: Engine | None = None
        self.ready = False
        self.reason: str | None = None  # why it is not ready (a load that failed names it)
        self.startup: dict[str, Any] = {}
        self._slots = threading.BoundedSemaphore(slots)
        self.ok_count = metrics.model_requests.labels(name, "200")
        self.latency = metrics.model_infer_latency.labels(name)
        self.ready_gauge = metrics.model_ready.labels(name)
        self.inflight = metrics.model_inflight.labels(name)
        self.cache_counter = metrics.model_cache
        metrics.model_slots.labels(name).set(slots)
        self.ready_gauge.set(0)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.bundle.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.bundle.outputs

    @property
    def batch(self) -> BatchProfile:
        return self.bundle.manifest.batch

    def mark_ready(self, ready: bool, reason: str | None = None) -> None:
        self.ready, self.reason = ready, reason
        self.ready_gauge.set(1 if ready else 0)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The engine call, within this model's slots (the caller has checked the feeds)."""
        self.inflight.inc()
        try:
            with self._slots:
                engine = self.engine
                if engine is None:
                    raise RequestError(
                        503, "not_ready", f"Model {self.name!r} is not loaded; retry when /readyz is 200."
                    )
                return engine.infer(feeds)
        finally:
            self.inflight.dec()

    def close(self) -> None:
        """Close the engine once every slot is free (a running inference finishes first)."""
        for _ in range(self.slots):
            self._slots.acquire()
        try:
            if self.engine is not None:
                self.engine.close()
            self.engine = None
        finally:
            for _ in range(self.slots):
                self._slots.release()
        self.mark_ready(False)

    def describe(self, backend: str) -> dict[str, Any]:
        """One entry of ``GET /v1/models``."""
        body: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "ready": self.ready,
            "backend": backend,
            "version": "1",
            "slots": self.slots,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }
        if self.reason:
            body["reason"] = self.reason
        return body


@dataclass
class ServedPipeline:
    """A declared pipeline, served under its own name like a model (its steps run the models' slots)."""

    pipeline: Pipeline
    metrics: ServiceMetrics
    kind = "pipeline"

    def __post_init__(self) -> None:
        self.ok_count = self.metrics.model_requests.labels(self.name, "200")
        self.latency = self.metrics.model_infer_latency.labels(self.name)

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.pipeline.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.pipeline.outputs)

    @property
    def batch(self) -> BatchProfile:
        assert self.pipeline.batch is not None
        return self.pipeline.batch
