"""The sockets of a hand-over (service/server.py), with two real ``edge-runtime serve`` processes: the new
one, started while the old one serves the address, listens only on its handover port (where its health
check asks too); on SIGUSR1 it listens on the address beside the old one (SO_REUSEPORT) and closes the
handover port; the old one is stopped (SIGTERM) and a 100 Hz poller of readiness and inference sees no
failed answer and no outage above the bound. Started alone, a process serves the address at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench._serve import free_port
from bench.downtime import Poller
from bench.ros2_handover import listening as accepts
from bench.ros2_handover import stop
from bench.ros2_handover import wait_ready as ready

from edge_runtime import oip
from tests.runtime.conftest import sample_feeds
from tests.runtime.test_serve_cli import ENV

# The longest outage the poller may see across the takeover on this (shared, 2-core) host; the goal
# for a robot is 0.1 s (bench/README.md, "downtime").
OUTAGE_BOUND_S = 0.1


def start(bundle: Path, cache: Path, port: int, handover: int, url_file: Path) -> subprocess.Popen[str]:
    env = {**ENV, "EDGE_HANDOVER_PORT": str(handover), "EDGE_HEALTH_URL_FILE": str(url_file)}
    cmd = [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle), "--cache", str(cache)]
    return subprocess.Popen(
        [*cmd, "--backend", "onnxruntime", "--port", str(port), "--drain-s", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def healthcheck_says(port: int, url_file: Path) -> str:
    """What Docker's health check (the module, as compose runs it) prints for a container with EDGE_PORT."""
    env = {**ENV, "EDGE_PORT": str(port), "EDGE_HEALTH_URL_FILE": str(url_file)}
    p = subprocess.run(
        [sys.executable, "-m", "edge_runtime.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return p.stdout + p.stderr


def test_a_new_process_takes_the_address_over_without_an_outage(tiny_bundle: Path, tmp_path: Path) -> None:
    port, handover = free_port(), free_port()
    old = start(tiny_bundle, tmp_path / "cache", port, handover, tmp_path / "old-url")
    new = None
    try:
        ready(port, old)
        assert not accepts(handover)  # alone: the address at once, and its health check asks there
        assert (tmp_path / "old-url").read_text().strip() == f"http://127.0.0.1:{port}"
        body, header_length = oip.encode_request(sample_feeds(), binary=True, binary_output=False)
        headers = {oip.HEADER_LENGTH: str(header_length)}
        with Poller("127.0.0.1", port, "/v2/models/tiny-policy/infer", body, headers) as poller:
            new = start(tiny_bundle, tmp_path / "cache", port, handover, tmp_path / "new-url")
            ready(handover, new)
            # gated on its own port: the health check asks there, the address still answers the old one
            assert (tmp_path / "new-url").read_text().strip() == f"http://127.0.0.1:{handover}"
            assert f"127.0.0.1:{handover}/readyz: HTTP 200" in healthcheck_says(port, tmp_path / "new-url")
            new.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while accepts(handover) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not accepts(handover), "the handover port is still open after SIGUSR1"
            assert (tmp_path / "new-url").read_text().strip() == f"http://127.0.0.1:{port}"
            old_log = stop(old)  # drains and exits; the new one serves the address alone
            time.sleep(0.5)
        seen = poller.summary()
        assert old.returncode in (0, -signal.SIGTERM), old_log
        assert seen["ok"] > 50 and seen["failed"] == 0, seen
        assert seen["longest_outage_s"] <= OUTAGE_BOUND_S, seen
        assert accepts(port)
    finally:
        stop(old)
        log = stop(new) if new is not None else ""
    assert f"took over http://127.0.0.1:{port}" in log, log
    assert "Traceback" not in log


def test_started_alone_with_a_handover_port_serves_the_address_at_once(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """After a reboot or a crash nothing else serves: the release must not wait for a takeover."""
    port, handover = free_port(), free_port()
    proc = start(tiny_bundle, tmp_path / "cache", port, handover, tmp_path / "url")
    try:
        ready(port, proc)
        assert not accepts(handover)
        assert (tmp_path / "url").read_text().strip() == f"http://127.0.0.1:{port}"
    finally:
        log = stop(proc)
    assert f"listening on http://127.0.0.1:{port}" in log
    assert not (tmp_path / "url").exists()  # stopped: the health check has nowhere to ask


def test_the_health_check_fails_until_the_service_says_where_it_listens(tmp_path: Path) -> None:
    """Before a hand-over's new release has bound anything, EDGE_PORT answers for the old release: asking
    it would make the new one look healthy. With EDGE_HEALTH_URL_FILE set, no file is no answer."""
    with socket.create_server(("127.0.0.1", 0)) as busy:  # something listens on EDGE_PORT
        port = busy.getsockname()[1]
        said = healthcheck_says(port, tmp_path / "absent")
    assert f"the service has not written where it listens to {tmp_path / 'absent'} yet" in said
    assert "/readyz" not in said


@pytest.mark.parametrize("value", ["http", "0", "70000"])
def test_a_bad_handover_port_is_one_sentence(tiny_bundle: Path, tmp_path: Path, value: str) -> None:
    env = {**ENV, "EDGE_HANDOVER_PORT": value}
    cmd = [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(tiny_bundle)]
    p = subprocess.run(
        [*cmd, "--cache", str(tmp_path / "c"), "--backend", "onnxruntime", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"EDGE_HANDOVER_PORT must be a port number from 1 to 65535, got {value!r}." in p.stderr
    assert os.path.exists(tiny_bundle)
