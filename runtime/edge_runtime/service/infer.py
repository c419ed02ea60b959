"""What /v1 and /v2 infer share: the app's state, the engine call, and one way to count and answer errors.

The infer routes are Starlette ``Route``s whose endpoint is plain ASGI (``InferRoute``): the handler reads
the body from ``receive`` and returns a ``Reply``, sent as two messages with no Request/Response objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from edge_runtime.errors import EdgeError, RequestError
from edge_runtime.service.inference import InferenceService
from edge_runtime.service.limits import RequestLimits
from edge_runtime.service.models import ServedModel, ServedPipeline
from edge_runtime.service.replies import Reply, json_reply, refusal, send_reply

log = logging.getLogger("edge_runtime.service")


class AppState:
    """What the handlers need: the service (engine, metrics, watchdog, thermal) and the request limits."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.metrics = service.metrics
        self.limits = RequestLimits(service.config.max_body_bytes)
        # Label children bound once: a labels() lookup per request is measurable at this scale.
        self._ok_count = self.metrics.requests.labels("200")
        self._fail_count = self.metrics.requests.labels("500")
        self._engine_errors = self.metrics.errors.labels("engine")

    def target(self, name: str | None = None) -> ServedModel | ServedPipeline:
        """The model or pipeline a path names (the default model for unnamed routes); 404/503 otherwise."""
        return self.service.target(name)

    async def run_engine(
        self, feeds: dict[str, np.ndarray], model: str | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """``service.infer`` inline or on the thread pool; returns the outputs and the engine time in ms."""
        t_inf = time.perf_counter()
        if self.service.config.inline_infer:
            outputs = self.service.infer(feeds, model)
        else:
            outputs = await run_in_threadpool(self.service.infer, feeds, model)
        return outputs, (time.perf_counter() - t_inf) * 1000.0

    def model_label(self, name: str | None) -> str:
        """The ``model`` label of a request: a served name (the default for unnamed routes), else "unknown"
        (a client's made-up names must not grow the metric's series)."""
        service = self.service
        if name is None:
            return service.default or "unknown"
        return name if name in service.models or name in service.pipelines else "unknown"

    async def guarded(self, handle: Callable[[], Awaitable[Reply]], model: str | None = None) -> Reply:
        """Status codes, metrics and error bodies shared by /v1 and /v2 infer (``{"error": sentence}``)."""
        t0 = time.perf_counter()
        try:
            reply = await handle()
        except RequestError as exc:
            self.metrics.requests.labels(str(exc.status)).inc()
            self.metrics.errors.labels(exc.reason).inc()
            self.metrics.model_requests.labels(self.model_label(model), str(exc.status)).inc()
            return refusal(exc)
        except EdgeError as exc:
            self._fail_count.inc()
            self._engine_errors.inc()
            self.metrics.model_requests.labels(self.model_label(model), "500").inc()
            return json_reply({"error": str(exc)}, 500)
        except Exception as exc:  # a backend failure must not take the service down or leak a traceback
            log.exception("inference failed")
            self._fail_count.inc()
            self._engine_errors.inc()
            self.metrics.model_requests.labels(self.model_label(model), "500").inc()
            return json_reply(
                {"error": f"Inference failed ({type(exc).__name__}); see the service log."}, 500
            )
        self._ok_count.inc()
        target = self.service.models.get(self.model_label(model)) or self.service.pipelines.get(
            self.model_label(model)
        )
        if target is not None:  # its pre-bound child: no labels() lookup on the success path
            target.ok_count.inc()
        self.metrics.latency.observe(time.perf_counter() - t0)
        return reply


# An infer handler: the state, the request's headers (lower-case bytes, as ASGI gives them), ASGI receive,
# and the path's parameters; it returns the reply or raises RequestError.
InferHandler = Callable[[AppState, dict[bytes, bytes], Any, dict[str, Any]], Awaitable[Reply]]


class InferRoute:
    """The ASGI endpoint of one infer route (Starlette's ``Route`` runs an object like this as plain ASGI)."""

    def __init__(self, state: AppState, handle: InferHandler) -> None:
        self.state = state
        self.handle = handle

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
        params = scope["path_params"]
        reply = await self.state.guarded(
            lambda: self.handle(self.state, headers, receive, params), params.get("name")
        )
        await send_reply(send, reply)
