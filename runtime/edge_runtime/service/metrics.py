"""The service's Prometheus metrics, in its own registry (the ROS 2 bridge adds its own to it)."""

from __future__ import annotations

from typing import Any

from edge_runtime.thermal import STATE_CODES


class ServiceMetrics:
    """Prometheus metrics in the service's own registry (the ROS 2 bridge adds its own to it)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Enum, Gauge, Histogram

        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.latency = Histogram(
            "edge_request_latency_seconds",
            "POST /v1/infer and /v2 infer latency, request to response",
            registry=registry,
            buckets=buckets,
        )
        self.infer_latency = Histogram(
            "edge_inference_latency_seconds",
            "Engine time of one inference",
            registry=registry,
            buckets=buckets,
        )
        self.requests = Counter(
            "edge_requests_total", "Inference requests by HTTP status", ["code"], registry=registry
        )
        self.errors = Counter(
            "edge_request_errors_total",
            "Rejected or failed inference requests by reason",
            ["reason"],
            registry=registry,
        )
        self.cache = Counter(
            "edge_engine_cache_total", "Engine cache lookups at start-up", ["result"], registry=registry
        )
        self.build_seconds = Gauge(
            "edge_engine_build_seconds",
            "Seconds the last engine build took (0: cache hit)",
            registry=registry,
        )
        self.ready = Gauge("edge_ready", "1 when the engine is loaded and warmed up", registry=registry)
        self.healthy = Gauge(
            "edge_healthy", "0 once the watchdog saw an inference overrun its deadline", registry=registry
        )
        self.temperature = Gauge(
            "edge_temperature_celsius", "Hottest watched thermal zone", registry=registry
        )
        self.thermal_state = Enum(
            "edge_thermal_state", "Thermal governor state", states=list(STATE_CODES), registry=registry
        )
        self.watchdog_trips = Counter(
            "edge_watchdog_trips_total", "Inferences that overran their deadline", registry=registry
        )
        # One series, set once the backend is chosen: a dashboard or alert finds robots serving ONNX Runtime
        # on the CPU because TensorRT was not usable (fallback="true"), with TensorRT's own sentence.
        self.backend = Gauge(
            "edge_backend_info",
            "The backend serving (1), what was asked for, and whether auto fell back from TensorRT and why",
            ["backend", "requested", "fallback", "reason"],
            registry=registry,
        )
        # Per model (and per pipeline) of a model repository; the series above stay service-wide, unchanged,
        # so dashboards and tests written for one model keep reading them.
        self.model_requests = Counter(
            "edge_model_requests_total",
            "Inference requests by model (or pipeline) and HTTP status",
            ["model", "code"],
            registry=registry,
        )
        self.model_infer_latency = Histogram(
            "edge_model_inference_latency_seconds",
            "Engine time of one inference, by model (pipelines: all their steps)",
            ["model"],
            registry=registry,
            buckets=buckets,
        )
        self.model_ready = Gauge(
            "edge_model_ready",
            "1 when the model's engine is loaded and warmed up",
            ["model"],
            registry=registry,
        )
        self.model_cache = Counter(
            "edge_model_engine_cache_total",
            "Engine cache lookups at start-up, by model",
            ["model", "result"],
            registry=registry,
        )
        self.model_slots = Gauge(
            "edge_model_slots", "Request slots: inferences a model runs at once", ["model"], registry=registry
        )
        self.model_inflight = Gauge(
            "edge_model_inflight",
            "Inferences running or waiting for a slot, by model",
            ["model"],
            registry=registry,
        )
