"""Processes of a simulated fleet, handled by PID only: a PID counts as ours while its command line still names
the config file we started it with, so nothing is ever stopped by name or by a recycled PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge_deploy.fleet import FleetError


def free_port(start: int, taken: set[int]) -> int:
    for port in range(start, start + 500):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise FleetError(f"No free TCP port on 127.0.0.1 from {start} to {start + 499}.")


def run(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise FleetError(f"{what} failed: {(p.stderr or p.stdout).strip()[-300:]}.")
    return p.stdout


def alive(pid: int | None, marker: str) -> bool:
    """The PID is running and is still the process we started (its command line names our config)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def terminate(pid: int | None, marker: str, timeout: float = 30) -> None:
    if not alive(pid, marker):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid, marker):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FleetError(f"sshd did not listen on 127.0.0.1:{port} within {timeout:.0f} s.")
