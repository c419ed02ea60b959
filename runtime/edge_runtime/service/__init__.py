"""The inference service: one engine behind a small HTTP API (Starlette on uvicorn).

Start-up: probe → engine cache get-or-build (progress lines while a long build runs) → warm-up → ready.
The HTTP server answers /healthz from the first second, so Docker sees a live process while TensorRT
builds; /readyz turns 200 once the engine is loaded and warmed up.

One job per module:
- ``inference``: ``ServiceConfig`` and ``InferenceService`` (engine start-up, checked inference, watchdog,
  thermal governor, health and readiness), no HTTP; ``metrics``: its Prometheus metrics;
- ``app``: the routes and the lifespan; ``server``: uvicorn, draining, the hung-engine exit;
- ``infer``: what both infer routes share; ``v1``: ``POST /v1/infer``; ``v2``: the Open Inference
  Protocol routes (its wire format is ``edge_runtime.oip``); ``health``: /healthz, /readyz, /metrics;
- ``limits``: body size and decoder queue; ``decoding``: JSON and npz bodies to arrays; ``decoder``: the
  child process that parses large JSON; ``replies``: answers as plain ASGI messages.
"""

from __future__ import annotations

from edge_runtime.errors import RequestError
from edge_runtime.service.app import create_app
from edge_runtime.service.decoding import NPZ
from edge_runtime.service.inference import (
    EXIT_HUNG,
    MIB,
    REASON_LABEL_CHARS,
    InferenceService,
    ServiceConfig,
)
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.server import pin_cpus, serve

__all__ = [
    "EXIT_HUNG",
    "MIB",
    "NPZ",
    "REASON_LABEL_CHARS",
    "InferenceService",
    "RequestError",
    "ServiceConfig",
    "ServiceMetrics",
    "create_app",
    "pin_cpus",
    "serve",
]
