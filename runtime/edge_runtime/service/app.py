"""The ASGI app: routes declared once, with Starlette's ``Route``; the lifespan loads the engine.

The infer routes sit in a bare ``Router`` in front of a Starlette app that holds every other route:
they skip Starlette's middleware (the handlers answer every error themselves), and their own near misses
(``/v1/infer/``) are 404s, not redirects. Wrong methods get 405 with ``Allow: POST``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeError
from edge_runtime.service.inference import InferenceService

if TYPE_CHECKING:
    from edge_runtime.service.infer import AppState, InferHandler

log = logging.getLogger("edge_runtime.service")


def create_app(
    service: InferenceService,
    load_in_background: bool = True,
    on_failure: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Any:
    """The app; its lifespan starts the engine load and the watchdog/thermal loops."""
    # Starlette loads with the app, not with the package: the decoder process and the CLI's fast
    # failures import edge_runtime.service without needing it.
    from starlette.applications import Starlette
    from starlette.routing import Route, Router

    from edge_runtime.service import health, v1, v2
    from edge_runtime.service.infer import AppState, InferRoute

    state = AppState(service)

    def get(path: str, handler: Callable[..., Any]) -> Route:
        return Route(path, functools.partial(handler, state), methods=["GET"])

    def post(path: str, handler: InferHandler) -> Route:
        return Route(path, InferRoute(state, handler), methods=["POST"])

    rest = Starlette(
        routes=[
            get("/healthz", health.healthz),
            get("/readyz", health.readyz),
            get("/metrics", health.metrics),
            get("/v2", v2.server),
            get("/v2/health/live", v2.live),
            get("/v2/health/ready", v2.ready),
            get("/v2/models/{name}", v2.metadata),
            get("/v2/models/{name}/ready", v2.model_ready),
            get("/v2/models/{name}/versions/{version}", v2.metadata),
            get("/v2/models/{name}/versions/{version}/ready", v2.model_ready),
            get("/v1/models", v1.models),
        ]
    )
    infer_routes = [
        post("/v1/infer", v1.infer),
        post("/v1/models/{name}/infer", v1.infer),
        post("/v1/pipelines/{name}/infer", v1.pipeline_infer),
        post("/v2/models/{name}/infer", v2.infer),
        post("/v2/models/{name}/versions/{version}/infer", v2.infer),
    ]
    lifespan = functools.partial(_lifespan, state, load_in_background, on_failure, on_shutdown)
    return Router(routes=infer_routes, redirect_slashes=False, default=rest, lifespan=lifespan)


@contextlib.asynccontextmanager
async def _lifespan(
    state: AppState,
    load_in_background: bool,
    on_failure: Callable[[str], None] | None,
    on_shutdown: Callable[[], None] | None,
    app: Any,
) -> AsyncIterator[None]:
    """Start the loops (and the engine load, unless done already); on shutdown close what the app owns."""
    service: InferenceService = state.service
    service.start_background()
    loader = None
    if load_in_background and not service.ready:

        def load() -> None:
            try:
                service.load()
            except Exception as exc:  # shown as one sentence, and the process exits non-zero
                service.failed = str(exc) if isinstance(exc, EdgeError) else f"Start-up failed: {exc!r}."
                log.error("start-up failed: %s", service.failed)
                if on_failure is not None:
                    on_failure(service.failed)

        loader = threading.Thread(target=load, name="edge-load", daemon=True)
        loader.start()
    try:
        yield
    finally:
        service.draining = True
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)  # e.g. stop the ROS 2 bridge before the engine closes
        # uvicorn has already waited for in-flight requests; close what the service owns.
        await asyncio.to_thread(state.limits.close)
        await asyncio.to_thread(service.close)
