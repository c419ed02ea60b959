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
    """One ``edge-runtime serve`` child; ``ready_s`` is spawn → first 200 from /readyz."""

    def __init__(self, bundle: Path, cache: Path, backend: str, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "edge_runtime",
            "serve",
            "--bundle",
            str(bundle),
            "--cache",
            str(cache),
            "--backend",
            backend,
            "--port",
            str(self.port),
            *(extra or []),
        ]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready_s: float | None = None
        self.startup: dict[str, Any] = {}

    def wait_ready(self, timeout_s: float = 900.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"edge-runtime serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
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
