"""A robot whose shell is a real ``sh`` on this machine, in a temporary home directory, with ``docker``,
``df`` and ``sudo`` replaced by small scripts that answer as a robot's would and log every call.

``RobotReleases`` runs its real commands against it (quoting, ``&&`` chains, ``mv``/``ln`` and the update
lock's ``flock`` all run for real); the SFTP side writes into the same home directory. Faults of the SSH
transport (a dropped connection, a timeout) are raised where the real ``RobotConnection`` raises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.ssh import CommandResult, RobotConnection

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
if args[:1] in (["ps"], ["inspect"], ["logs"], ["image"]):  # answers by a fragment of the command line
    line = " ".join(args)
    answer(next((v for k, v in cfg.get(args[0], {}).items() if k in line), [0, "", ""]))
answer([0, "", ""])
'''


class _Stdout:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def readline(self) -> str:
        return (await self.reader.readline()).decode()


class _Stdin:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def write_eof(self) -> None:
        self.writer.close()


class _Process:
    """The parts of asyncssh's SSHClientProcess that the update lock uses."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self.stdout = _Stdout(proc.stdout)
        self.stdin = _Stdin(proc.stdin)

    async def wait_closed(self) -> None:
        await self.proc.wait()

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class _Sessions:
    """Stands for the asyncssh connection (``RobotConnection.conn``): long-lived remote processes."""

    def __init__(self, robot: LocalRobot) -> None:
        self.robot = robot

    async def create_process(self, command: str) -> _Process:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            cwd=self.robot.home,
            env=self.robot.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return _Process(proc)


class LocalRobot(RobotConnection):
    """``RobotConnection`` on a local shell; ``config`` is what the stand-in commands answer (see STUB)."""

    def __init__(self, robot: Robot, root: Path, config: dict[str, Any]) -> None:
        super().__init__(robot, _Sessions(self))  # type: ignore[arg-type]
        self.home = root / "home"
        self.stubs = root / "stubs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.stubs.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.save_config()
        for name in ("docker", "df", "sudo"):
            script = self.stubs / name
            script.write_text(STUB.replace("PYTHON", sys.executable).replace("NAME", name))
            script.chmod(0o755)
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "PATH": f"{self.stubs}:{os.environ['PATH']}",
            "EDGE_STUB_DIR": str(self.stubs),
        }
        self.commands: list[str] = []
        self.stdin_writes: list[str] = []  # commands that were given data on stdin
        self.sftp_writes: list[str] = []  # paths written through the SFTP side
        self.transport_faults: dict[str, FleetError] = {}  # command substring → what the transport raises
        self.canned: dict[str, CommandResult] = {}  # command substring → answer without running it
        self.service_port: int | None = None  # where forward() leads: a real service on this machine

    def save_config(self) -> None:
        """What the stand-in commands answer from now on (``config``, changed in place by a test)."""
        (self.stubs / "config.json").write_text(json.dumps(self.config))

    def calls(self, name: str = "docker") -> list[list[str]]:
        path = self.stubs / "calls.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r[1:] for r in rows if r[0] == name]

    def file(self, path: str) -> Path:
        return self.home / path

    async def run(
        self, command: str, *, timeout: float | None = 600, stdin: str | None = None
    ) -> CommandResult:
        self.commands.append(command)
        if stdin is not None:
            self.stdin_writes.append(command)
        for needle, fault in self.transport_faults.items():
            if needle in command:
                raise fault
        for needle, result in self.canned.items():
            if needle in command:
                return result
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            cwd=self.home,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        return CommandResult(proc.returncode or 0, out.decode(), err.decode())

    async def upload(self, files: dict[str, bytes], remote_dir: str) -> int:
        d = self.home / remote_dir
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
            self.sftp_writes.append(f"{remote_dir}/{name}")
        return sum(len(b) for b in files.values())

    async def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        p = self.home / path
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "ab" if append else "wb") as f:
            f.write(data)
        self.sftp_writes.append(path)

    @contextlib.asynccontextmanager
    async def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AsyncIterator[int]:
        """The robot's service port, reached on this machine (``service_port``: a real service here)."""
        assert remote_port == self.robot.service_port
        yield self.service_port if self.service_port is not None else remote_port

    async def close(self) -> None:
        return None
