"""The agent's local connection against real commands on this machine: ``sh -c`` in a temporary home
directory, files written where the robot's shell finds them, the update lock's ``flock`` held and let go,
a command past its timeout killed, the service reached directly or through the relay, and ``docker pull``
by digest from the registry through the same ``RobotStore`` code SSH mode runs (a real Docker engine)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_deploy.agent.local import LocalConnection
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.ssh import CommandTimeout
from edge_deploy.fleet.store import RobotStore
from tests.build.channels import REGISTRY, registry_up
from tests.support import need, need_tool


def conn(home: Path, **kw: Any) -> LocalConnection:
    robot = Robot(name="arm-1", host="127.0.0.1", compose_dir="edge", platform="linux/amd64", gpu=False)
    return LocalConnection(robot, home=home, **kw)


def test_commands_run_in_the_home_with_their_status_and_input(tmp_path: Path) -> None:
    c = conn(tmp_path)
    r = asyncio.run(c.run("pwd; echo out; echo err >&2; exit 3"))
    assert (r.rc, r.stdout, r.stderr) == (3, f"{tmp_path.resolve()}\nout\n", "err\n")
    assert asyncio.run(c.run("cat", stdin="given")).stdout == "given"
    assert asyncio.run(c.run("echo $HOME")).stdout.strip() == str(tmp_path.resolve())


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    c = conn(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"command timed out after 0 s: sleep 30; touch late"):
        asyncio.run(c.run("sleep 30; touch late", timeout=0.5))
    assert time.monotonic() - t0 < 10
    time.sleep(0.5)
    assert not (tmp_path / "late").exists()


def test_files_are_written_where_the_shell_finds_them(tmp_path: Path) -> None:
    c = conn(tmp_path)
    asyncio.run(c.write_file("edge/state.json", b'{"a": 1}'))
    asyncio.run(c.write_file("edge/history.jsonl", b"one\n", append=True))
    asyncio.run(c.write_file("edge/history.jsonl", b"two\n", append=True))
    sent = asyncio.run(c.upload({"compose.yaml": b"services: {}\n", ".env": b"X=1\n"}, "edge/releases/.tmp"))
    assert sent == len(b"services: {}\n") + len(b"X=1\n")
    r = asyncio.run(c.run("cat edge/state.json edge/history.jsonl edge/releases/.tmp/.env"))
    assert r.stdout == '{"a": 1}one\ntwo\nX=1\n'
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [
        "history.jsonl",
        "releases",
        "state.json",
    ]


def test_the_update_lock_is_held_and_let_go(tmp_path: Path) -> None:
    store = RobotStore(conn(tmp_path))

    async def scenario() -> tuple[bool, int, int]:
        async with store.update_lock(5) as locked:
            other = await store.conn.run("flock -n edge/update.lock true")
        after = await store.conn.run("flock -n edge/update.lock true")
        return locked, other.rc, after.rc

    locked, while_held, after = asyncio.run(scenario())
    assert locked and while_held == 1 and after == 0


def test_the_update_lock_waits_for_the_application_then_gives_up(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    holder = subprocess.Popen(["flock", str(tmp_path / "edge/update.lock"), "sleep", "30"])
    try:
        time.sleep(0.3)
        store = RobotStore(conn(tmp_path))

        async def scenario() -> bool:
            async with store.update_lock(1) as locked:
                return locked

        assert asyncio.run(scenario()) is False
    finally:
        holder.kill()
        holder.wait()


class Hello:
    def __init__(self, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"ready": true}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_the_service_is_reached_directly_or_through_the_relay(tmp_path: Path) -> None:
    local = Hello("127.0.0.1")
    try:

        async def direct() -> tuple[int, int]:
            async with conn(tmp_path).forward(local.port) as port:
                return port, httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code

        assert asyncio.run(direct()) == (local.port, 200)
    finally:
        local.close()
    addr = _non_loopback_address()
    need(addr is not None, "a non-loopback IPv4 address on this machine")
    assert addr is not None
    remote = Hello(addr)  # the service of a robot whose agent runs elsewhere (a sidecar, a simulation)
    try:

        async def relayed() -> tuple[int, str]:
            async with (
                conn(tmp_path, service_host=addr).forward(remote.port) as port,
                httpx.AsyncClient(timeout=5) as http,
            ):
                r = await http.get(f"http://127.0.0.1:{port}/readyz")
                return port, r.text

        port, text = asyncio.run(relayed())
        assert port != remote.port and text == '{"ready": true}'
    finally:
        remote.close()


@pytest.fixture
def pushed_image() -> Iterator[str]:
    """A one-file image built and pushed to the registry, then removed from the engine: repo@digest."""
    need_tool("docker")
    need(registry_up(), f"a registry on {REGISTRY} (scripts/host-setup)")
    ctx = Path(tempfile.mkdtemp(prefix="edge-agent-img-"))
    tag = f"{REGISTRY}/edge-deploy-agent-local/img:{uuid.uuid4().hex[:8]}"
    try:
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY nonce /nonce\n")
        (ctx / "nonce").write_text(uuid.uuid4().hex)
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True, timeout=300
        )
        subprocess.run(["docker", "push", "-q", tag], check=True, capture_output=True, timeout=300)
        digest = httpx.head(
            f"http://{REGISTRY}/v2/{tag.split('/', 1)[1].replace(':', '/manifests/')}",
            headers={
                "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
            },
            timeout=10,
        ).headers["docker-content-digest"]
        subprocess.run(["docker", "image", "rm", "-f", tag], check=True, capture_output=True, timeout=120)
        ref = f"{tag.rsplit(':', 1)[0]}@{digest}"
        yield ref
        subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


@pytest.mark.docker
def test_docker_pull_by_digest_through_the_store(tmp_path: Path, pushed_image: str) -> None:
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    store = RobotStore(conn(tmp_path, docker_host=docker_host))
    assert not asyncio.run(store.image_present(pushed_image))
    asyncio.run(store.pull(pushed_image))
    assert asyncio.run(store.image_present(pushed_image))
    assert asyncio.run(store.running_image()) is None  # no edge service runs on this engine
    space = asyncio.run(store.free_space())
    assert space[0][0] == "the compose directory" and all(mb > 0 for _, _, mb in space)
