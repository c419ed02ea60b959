"""Run the app under uvicorn until SIGTERM/SIGINT, and leave at once when the watchdog finds a hung engine.

The service address is bound with ``SO_REUSEPORT``, so that the next release can listen on it beside this
one (the ``hand-over`` update strategy, docs/fleet.md). A release started while another process already
serves its address (``EDGE_HANDOVER_PORT`` set) listens only on that port of its own, where the operator's
health gate reaches it alone; ``SIGUSR1`` then makes it take over the service address (the old release is
stopped only afterwards). Started while nothing serves the address (a reboot, a crash, ``stop-start``), it
serves the address at once.

The ROS 2 bridge follows the same moments through the hooks of ``serve``: ``on_standby`` when the process
starts as a hand-over candidate, ``on_takeover`` on SIGUSR1 (before the address is bound: DDS needs no port),
and ``on_exit_signal`` as soon as SIGTERM/SIGINT arrives, before uvicorn drains HTTP requests, so the old
release stops publishing actions first (edge_runtime.ros2.bridge explains the order).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.errors import EdgeError
from edge_runtime.service.app import create_app
from edge_runtime.service.inference import EXIT_HUNG, InferenceService

TAKEOVER_SIGNAL = signal.SIGUSR1
# How long a takeover retries binding the service address when the running release did not bind it with
# SO_REUSEPORT (an edge-runtime older than hand-over): its port frees once it is stopped.
TAKEOVER_BIND_S = 120.0


def handover_port_from_env() -> int | None:
    """EDGE_HANDOVER_PORT (the port a release is gated on before it takes over), or None when unset."""
    raw = os.environ.get("EDGE_HANDOVER_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise EdgeError(f"EDGE_HANDOVER_PORT must be a port number from 1 to 65535, got {raw!r}.")
    return int(raw)


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for ``host:port`` (not listening yet); ``reuse_port``: SO_REUSEPORT, so that
    another process can listen on the same address while this one still serves."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    try:
        return listen_socket(host, port, reuse_port)
    except OSError as exc:
        raise EdgeError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None


def someone_serves(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a process already accepts connections on ``host:port``."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def service_url(host: str, port: int) -> str:
    """The URL a health check on this machine reaches ``host:port`` with (EDGE_HEALTH_URL when set)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return os.environ.get("EDGE_HEALTH_URL") or f"http://{target}:{port}"


def _health_url_file() -> str | None:
    return os.environ.get("EDGE_HEALTH_URL_FILE") or None


def _write_health_url(url: str | None) -> None:
    """Where Docker's health check must ask (``edge_runtime.healthcheck``): the handover port while this
    release is gated there, the service address once it serves it, nothing (the check fails) before it
    listens and after it stopped."""
    path = _health_url_file()
    if path is None:
        return
    with contextlib.suppress(OSError):
        if url is None:
            os.unlink(path)
        else:
            with open(f"{path}.tmp", "w", encoding="utf-8") as f:
                f.write(url + "\n")
            os.replace(f"{path}.tmp", path)


def _make_server_class() -> type[Any]:
    import uvicorn

    class HandoverServer(uvicorn.Server):
        """uvicorn's server, plus the takeover of the service address on SIGUSR1."""

        handover: tuple[str, int] | None = None  # the service address still to take over
        service_sock: socket.socket | None = None  # bound with SO_REUSEPORT, not listening yet
        say: Callable[[str], None] = print
        on_takeover: Callable[[], None] | None = None
        on_exit_signal: Callable[[], None] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            hook, self.on_exit_signal = self.on_exit_signal, None
            if hook is not None:
                try:
                    hook()
                except Exception as exc:  # the drain and the exit must happen anyway
                    self.say(f"on exit: {type(exc).__name__}: {exc}")
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.handover is not None and not self.should_exit:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(TAKEOVER_SIGNAL, lambda: loop.create_task(self.take_over()))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            _write_health_url(None)  # here: uvicorn re-raises SIGTERM once it has drained, ending the process
            await super().shutdown(sockets)

        async def take_over(self) -> None:
            """Listen on the service address beside the release that serves it, then close the handover
            port: from here on the kernel spreads new connections over both, until the old one stops."""
            if self.handover is None:
                return
            host, port = self.handover
            self.handover = None
            if self.on_takeover is not None:
                try:
                    self.on_takeover()
                except Exception as exc:  # the HTTP side takes over regardless
                    self.say(f"takeover: {type(exc).__name__}: {exc}")
            sock, deadline = self.service_sock, time.monotonic() + TAKEOVER_BIND_S
            while sock is None:
                try:
                    sock = listen_socket(host, port, reuse_port=True)
                except OSError as exc:
                    if time.monotonic() > deadline or self.should_exit:
                        self.say(f"takeover failed: cannot bind {host}:{port} ({exc.strerror})")
                        return
                    await asyncio.sleep(0.05)
            config = self.config
            loop = asyncio.get_running_loop()

            def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
                proto: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
                )
                return proto

            server = await loop.create_server(create_protocol, sock=sock, backlog=config.backlog)
            gate_servers, self.servers = self.servers, [server]
            _write_health_url(service_url(host, port))
            for gate in gate_servers:  # the handover port: the gate is done with it
                gate.close()
            self.servers.extend(gate_servers)  # closed again (a no-op) at shutdown
            self.say(f"took over http://{host}:{port}")

    return HandoverServer


def serve(
    service: InferenceService,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    handover_port: int | None = None,
    on_standby: Callable[[], None] | None = None,
    on_takeover: Callable[[], None] | None = None,
    on_exit_signal: Callable[[], None] | None = None,
) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; uvicorn stops accepting, then drains in-flight requests.
    With ``handover_port`` (default: EDGE_HANDOVER_PORT) and another process serving ``host:port``, listen
    on the handover port until SIGUSR1 (see the module's docstring, also for the three hooks)."""
    import uvicorn

    if handover_port is None:
        handover_port = handover_port_from_env()
    server: Any = None

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
    server = _make_server_class()(config)
    server.say = service.say
    server.on_takeover = on_takeover
    server.on_exit_signal = on_exit_signal
    _write_health_url(None)
    handing_over = handover_port is not None and handover_port != port and someone_serves(host, port)
    if handing_over:
        assert handover_port is not None
        sockets = [_bind(host, handover_port, reuse_port=False)]
        try:
            server.service_sock = listen_socket(host, port, reuse_port=True)
        except OSError:  # the running release holds the address alone: bound at takeover
            server.service_sock = None
        server.handover = (host, port)
        _write_health_url(f"http://127.0.0.1:{handover_port}")
        if on_standby is not None:
            on_standby()
    else:
        sockets = [_bind(host, port, reuse_port=True)]
        _write_health_url(service_url(host, port))

    if on_ready is not None:

        def wait_ready() -> None:
            while not service.ready and not service.failed and not service._stop.is_set():
                time.sleep(0.05)
            if service.ready:
                on_ready()

        threading.Thread(target=wait_ready, name="edge-on-ready", daemon=True).start()
    if handing_over:
        service.say(
            f"listening on http://{host}:{handover_port} (another process serves port {port}; "
            f"SIGUSR1 takes it over)"
        )
    else:
        service.say(f"listening on http://{host}:{port}")
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets + ([server.service_sock] if server.service_sock is not None else []):
            with contextlib.suppress(OSError):
                sock.close()
        _write_health_url(None)
    if service.failed:
        raise EdgeError(service.failed)
    return 0


def pin_cpus(cpus: list[int]) -> None:
    """Pin this process (and the threads it starts later) to the given CPUs."""
    try:
        os.sched_setaffinity(0, set(cpus))
    except (OSError, ValueError) as exc:
        raise EdgeError(f"Cannot pin to CPUs {cpus}: {exc}.") from None
