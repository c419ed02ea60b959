"""A robot whose shell is a real ``sh`` on this machine, in a temporary home directory, with ``docker``,
``df`` and ``sudo`` replaced by small scripts that answer as a robot's would and log every call.

``RobotReleases`` runs its real commands against it (quoting, ``&&`` chains, ``mv``/``ln``, the update
lock's ``flock`` and compose/edge-update.sh all run for real); the SFTP side writes into the same home
directory. Faults of the SSH transport (a dropped connection, a timeout, a failed upload) are raised where
the real ``RobotConnection`` raises them. ``GateService`` is the service the health gate talks to (a tiny
HTTP server on loopback), and ``robot_on`` sets up a robot already running a release.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import edge_deploy.fleet.store as store_mod
import edge_deploy.fleet.switch as switch_mod
from edge_deploy.agent.local import LocalConnection
from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.ssh import CommandResult

STUB = r'''#!PYTHON
"""Stand-in for a robot's NAME: answers from $EDGE_STUB_DIR/config.json, logs argv to calls.jsonl."""
import json, os, sys
d = os.environ["EDGE_STUB_DIR"]
cfg = json.load(open(os.path.join(d, "config.json")))
args = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(["NAME", *args]) + "\n")

def running():
    """EDGE_IMAGE of ~/edge/current/.env: what the container runs once compose brought current up."""
    try:
        env = open(os.path.join(os.environ["HOME"], "edge", "current", ".env")).read()
    except OSError:
        return ""
    return next((ln.split("=", 1)[1] for ln in env.splitlines() if ln.startswith("EDGE_IMAGE=")), "")

def answer(spec):
    rc, out, err = (list(spec) + [0, "", ""])[:3] if isinstance(spec, list) else (0, str(spec), "")
    if "{RUNNING" in out:
        image = running()
        out = out.replace("{RUNNING}", image).replace("{RUNNING_DIGEST}", image.rpartition("@")[2])
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(rc)

def take(key):
    """The next answer of a list (the last one repeats), counted in state.json."""
    path = os.path.join(d, "state.json")
    state = json.load(open(path)) if os.path.exists(path) else {}
    n = state.get(key, 0)
    state[key] = n + 1
    json.dump(state, open(path, "w"))
    seq = cfg.get(key) or [[0, "", ""]]
    return seq[min(n, len(seq) - 1)]

if "NAME" == "df":
    paths = [a for a in args if not a.startswith("-")]
    rc = 0
    print("Filesystem 1024-blocks Used Available Capacity Mounted on")
    for p in paths:
        best = max((k for k in cfg["df"] if p == k or p.startswith(k.rstrip("/") + "/")), key=len, default=None)
        kb = cfg["df"].get(best, cfg["df"].get("*"))
        if kb == "denied" or kb is None:
            sys.stderr.write(f"df: {p}: Permission denied\n")
            rc = 1
            continue
        print(f"/dev/stub 999999999 0 {kb} 1% /")
    sys.exit(rc)
if "NAME" == "sudo":
    sys.exit(0)
# docker
if args[:1] == ["info"]:
    answer(cfg.get("info", [1, "", "Cannot connect to the Docker daemon"]))
if args[:2] == ["volume", "inspect"]:
    answer(cfg.get("volume", [1, "", "Error response from daemon: get edge_engine-cache: no such volume"]))
if args[:1] == ["pull"]:
    answer(take("pull"))
if args[:1] == ["compose"] and "run" in args:
    answer(take("prebuild"))
if args[:1] == ["compose"] and "up" in args:
    answer(take("up"))
if args[:1] in (["ps"], ["inspect"], ["logs"], ["image"], ["run"], ["exec"]):  # by a fragment of the line
    line = " ".join(args)
    answer(next((v for k, v in cfg.get(args[0], {}).items() if k in line), [0, "", ""]))
answer([0, "", ""])
'''


class LocalRobot(LocalConnection):
    """The agent's ``LocalConnection`` in a temporary home, with stand-in commands first on its PATH
    (``config`` is what they answer, see STUB) and the transport's faults and records a test needs."""

    def __init__(self, robot: Robot, root: Path, config: dict[str, Any]) -> None:
        home = root / "home"
        self.stubs = root / "stubs"
        home.mkdir(parents=True, exist_ok=True)
        self.stubs.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.save_config()
        for name in ("docker", "df", "sudo"):
            script = self.stubs / name
            script.write_text(STUB.replace("PYTHON", sys.executable).replace("NAME", name))
            script.chmod(0o755)
        env = {"PATH": f"{self.stubs}:{os.environ['PATH']}", "EDGE_STUB_DIR": str(self.stubs)}
        super().__init__(robot, home=home, env=env)
        self.commands: list[str] = []
        self.stdin_writes: list[str] = []  # commands that were given data on stdin
        self.sftp_writes: list[str] = []  # paths written through the SFTP side
        self.transport_faults: dict[str, FleetError] = {}  # command substring → what the transport raises
        self.canned: dict[str, CommandResult] = {}  # command substring → answer without running it
        self.upload_fault: FleetError | None = None  # what the SFTP side raises on the next upload
        self.service_port: int | None = None  # where forward() leads: a real service on this machine

    def save_config(self) -> None:
        """What the stand-in commands answer from now on (``config``, changed in place by a test)."""
        (self.stubs / "config.json").write_text(json.dumps(self.config))

    def calls(self, name: str = "docker") -> list[list[str]]:
        path = self.stubs / "calls.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r[1:] for r in rows if r[0] == name]

    def file(self, path: str) -> Path:
        return self.path(path)

    async def run(
        self, command: str, *, timeout: float | None = 600, stdin: str | None = None
    ) -> CommandResult:
        """Record the command, raise a planned transport fault or give a canned answer, else run it
        (without a timeout: a loaded test machine must not turn a slow stand-in into a fault)."""
        self.commands.append(command)
        if stdin is not None:
            self.stdin_writes.append(command)
        for needle, fault in self.transport_faults.items():
            if needle in command:
                raise fault
        for needle, result in self.canned.items():
            if needle in command:
                return result
        return await super().run(command, timeout=None, stdin=stdin)

    async def upload(self, files: dict[str, bytes], remote_dir: str) -> int:
        if self.upload_fault is not None:  # half the files went up, then the transfer broke
            fault, self.upload_fault = self.upload_fault, None
            name, data = next(iter(files.items()))
            await super().upload({name: data[: len(data) // 2]}, remote_dir)
            raise fault
        sent = await super().upload(files, remote_dir)
        self.sftp_writes.extend(f"{remote_dir}/{name}" for name in files)
        return sent

    async def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        await super().write_file(path, data, append=append)
        self.sftp_writes.append(path)

    @contextlib.asynccontextmanager
    async def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AsyncIterator[int]:
        """The robot's service port (or a hand-over's gate port), reached on this machine (``service_port``:
        a real service here)."""
        assert remote_port in (self.robot.service_port, self.robot.gate_port)
        yield self.service_port if self.service_port is not None else remote_port


# --- a robot already on a release, and the service its gate talks to ---------------------------------------

RUNTIME = "reg.example/team/runtime@sha256:"
OLD = RUNTIME + "a" * 64  # the image of release 0.1.0 in robot_on
BIG_DISK = {"*": 50 * 1024 * 1024}  # df -Pk: 50 GB free everywhere
# One input, one output, as GET /v2/models/policy describes the sample policy.
POLICY = {
    "name": "policy",
    "inputs": [{"name": "obs", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "action", "datatype": "FP32", "shape": [-1, 2]}],
}


class GateService:
    """What the operator's health gate reaches through the port forward: a tiny HTTP server on loopback
    that answers ``/readyz``, the model's metadata and one inference as a ready edge-runtime does, until a
    test changes ``ready``, ``backend`` or ``infer`` (then ``reset``)."""

    def __init__(self) -> None:
        self.reset()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    ready = {"ready": gate.ready, "model": "policy", "backend": gate.backend}
                    ready.update(gate.ready_extra)
                    self.answer(200 if gate.ready else 503, ready)
                elif self.path == "/v2/models/policy":
                    self.answer(200, POLICY)
                else:
                    self.answer(404, {"error": "not found"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v2/models/policy/infer":
                    self.answer(*gate.infer)
                else:
                    self.answer(404, {"error": "not found"})

            def answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])

    def reset(self) -> None:
        """Ready, served by ``onnxruntime``, and the inference answers one action of shape [1, 2]."""
        self.ready = True
        self.backend = "onnxruntime"
        self.ready_extra: dict[str, Any] = {}
        action = {"name": "action", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.5]}
        self.infer: tuple[int, dict[str, Any]] = (200, {"model_name": "policy", "outputs": [action]})

    @contextlib.contextmanager
    def serving(self) -> Iterator[GateService]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(timeout=10)


def robot_on(
    root: Path,
    port: int,
    version: str | None = "0.1.0",
    *,
    running: str = "{RUNNING}",
    kept: dict[str, str] | None = None,
    previous: str | None = None,
    gpu: bool = False,
    lock_wait_s: float = 5,
    **config: Any,
) -> LocalRobot:
    """A robot whose current release is ``version`` (image OLD; None: a fresh robot with no release),
    with the other releases of ``kept`` (version → image) on its disk and ``previous`` recorded. Its
    container runs ``running`` (by default what current/.env names, as after `docker compose up`) and
    reports healthy; ``config`` overrides what the stand-in commands answer (see STUB)."""
    lr = LocalRobot(
        Robot(name="arm-1", host="127.0.0.1", compose_dir="edge", lock_wait_s=lock_wait_s, gpu=gpu),
        root,
        {
            "df": BIG_DISK,
            "ps": {"": [0, "c0ffee\n", ""]},
            "inspect": {
                "State.Status}} {{.State.ExitCode": [0, "restarting 3 4 none\n", ""],
                "State.Status": [0, f"running healthy {running}\n", ""],
                "-f {{.Config.Image}}": [0, running + "\n", ""],
                "-f {{.Image}}": [
                    0,
                    ("{RUNNING_DIGEST}" if running == "{RUNNING}" else running.split("@")[-1]) + "\n",
                    "",
                ],
            },
            "image": {
                "RepoDigests": [0, (running if "@" in running or running == "{RUNNING}" else "") + " \n", ""]
            },
            **config,
        },
    )
    lr.service_port = port
    releases = {**(kept or {}), **({version: OLD} if version else {})}
    for name, image in releases.items():
        d = lr.file(f"edge/releases/{name}")
        d.mkdir(parents=True)
        (d / ".env").write_text(f"EDGE_IMAGE={image}\n")
        (d / "release.json").write_text(json.dumps({"version": name, "image": image}) + "\n")
    if version:
        os.symlink(f"releases/{version}", lr.file("edge/current"))
        state = {"current": version, "previous": previous, "image": OLD}
        lr.file("edge/state.json").write_text(json.dumps(state))
    return lr


def robot_state(lr: LocalRobot) -> dict[str, Any]:
    """state.json as it is on the robot's disk."""
    p = lr.file("edge/state.json")
    return dict(json.loads(p.read_text())) if p.exists() else {}


def robot_history(lr: LocalRobot) -> list[dict[str, Any]]:
    """history.jsonl as it is on the robot's disk, one entry a line."""
    p = lr.file("edge/history.jsonl")
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def current_link(lr: LocalRobot) -> str | None:
    """Where the robot's ``current`` symlink points (None: there is none)."""
    p = lr.file("edge/current")
    return os.readlink(p) if p.is_symlink() else None


def wait_for_state(lr: LocalRobot, results: set[str], timeout: float = 30) -> dict[str, Any]:
    """The robot's own state once its ``last_result`` is one of ``results``, read from its disk while no
    operator is connected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = robot_state(lr)
        if st.get("last_result") in results:
            return st
        time.sleep(0.2)
    raise AssertionError(f"the robot did not reach {results}: {robot_state(lr)}")


def wait_script_done(lr: LocalRobot, timeout: float = 30) -> None:
    """Wait until the robot's edge-update.sh (the pid in state.json) has exited: it writes its history line
    just after the state the operator returns on."""
    pid = robot_state(lr).get("pid")
    deadline = time.monotonic() + timeout
    while isinstance(pid, int) and time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rpartition(")")[2].split()[0] == "Z":  # exited, not reaped yet
            return
        time.sleep(0.1)


def no_waits(monkeypatch: pytest.MonkeyPatch, poll_s: float) -> None:
    """The same steps in the same order, without the seconds of backoff between retries, and reading the
    robot's state every ``poll_s`` while edge-update.sh runs."""
    monkeypatch.setattr(store_mod, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(switch_mod, "POLL_S", poll_s)
