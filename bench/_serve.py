"""Start ``edge-runtime serve`` as a child process and wait for /readyz: shared by the runtime benchmarks."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One ``edge-runtime serve`` child; ``ready_s`` is spawn → first 200 from /readyz.

    ``bundle``, ``cache`` or ``backend`` left as None are not passed (the child reads EDGE_* from ``env``);
    ``merge_output`` sends stderr into ``proc.stdout`` for callers that read the service's log.
    """

    def __init__(
        self,
        bundle: Path | None,
        cache: Path | None,
        backend: str | None,
        extra: list[str] | None = None,
        *,
        script: list[str] | None = None,
        env: dict[str, str] | None = None,
        merge_output: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, *(script or ["-m", "edge_runtime"]), "serve", "--port", str(self.port)]
        for flag, value in (("--bundle", bundle), ("--cache", cache), ("--backend", backend)):
            if value is not None:
                cmd += [flag, str(value)]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*cmd, *(extra or [])],
            stdout=subprocess.PIPE if merge_output else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
            text=True,
            env=env,
        )
        self.ready_s: float | None = None
        self.startup: dict[str, Any] = {}

    def wait_ready(self, timeout_s: float = 900.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                log = self.proc.stderr or self.proc.stdout
                raise RuntimeError(f"edge-runtime serve exited: {log.read() if log else ''}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        self.ready_s = time.perf_counter() - self.t0
                        self.startup = json.loads(r.read()).get("startup", {})
                        return self.ready_s
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.005)
        raise TimeoutError("service did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spread(values: list[float]) -> dict[str, float]:
    import statistics

    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }
