"""Run the app under uvicorn until SIGTERM/SIGINT, and leave at once when the watchdog finds a hung engine."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

from edge_runtime.errors import EdgeError
from edge_runtime.service.app import create_app
from edge_runtime.service.inference import EXIT_HUNG, InferenceService


def serve(
    service: InferenceService,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; uvicorn stops accepting, then drains in-flight requests."""
    import uvicorn

    server: uvicorn.Server | None = None

    def fail(msg: str) -> None:
        if server is not None:
            server.should_exit = True

    def exit_hung(msg: str) -> None:
        """A stuck engine call can be neither interrupted nor drained (closing the engine would wait for
        it): say why, and leave at once so the restart policy starts a fresh process."""
        service.say(f"watchdog: {msg}")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_HUNG)

    if service.on_hung is None:
        service.on_hung = exit_hung
    app = create_app(service, on_failure=fail, on_shutdown=on_stop)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(drain_timeout_s),
        loop="asyncio",
        http="auto",
    )
    server = uvicorn.Server(config)

    if on_ready is not None:

        def wait_ready() -> None:
            while not service.ready and not service.failed and not service._stop.is_set():
                time.sleep(0.05)
            if service.ready:
                on_ready()

        threading.Thread(target=wait_ready, name="edge-on-ready", daemon=True).start()
    service.say(f"listening on http://{host}:{port}")
    server.run()
    if service.failed:
        raise EdgeError(service.failed)
    return 0


def pin_cpus(cpus: list[int]) -> None:
    """Pin this process (and the threads it starts later) to the given CPUs."""
    try:
        os.sched_setaffinity(0, set(cpus))
    except (OSError, ValueError) as exc:
        raise EdgeError(f"Cannot pin to CPUs {cpus}: {exc}.") from None
