"""The robot's own shell as the deploy state machine's connection: ``RobotStore``, ``RobotSwitch`` and
``RobotReleases`` run exactly the commands they run over SSH, here through ``sh -c`` on the robot, with
files written atomically to the same paths and the update lock held by the same ``flock`` process. So the
agent and SSH mode share one implementation, one on-robot layout, history, bad-versions list and automatic
rollback (edge-update.sh)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.ssh import CommandResult, CommandTimeout, RobotConnection


class _Lines:
    """A process's stdout as the update lock reads it (``readline`` → text, as asyncssh gives it)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def readline(self) -> str:
        return (await self.reader.readline()).decode(errors="replace")


class _Input:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def write_eof(self) -> None:
        self.writer.close()


class LocalProcess:
    """A long-lived local process with the parts of asyncssh's SSHClientProcess the update lock uses: when
    its stdin closes (the agent let go, or died) ``flock``'s ``cat`` ends and the lock is released."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None or proc.stdin is None:
            raise FleetError("A local process was started without pipes.")
        self.proc = proc
        self.stdout = _Lines(proc.stdout)
        self.stdin = _Input(proc.stdin)

    async def wait_closed(self) -> None:
        await self.proc.wait()

    def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class LocalSessions:
    """Stands where ``RobotConnection.conn`` (the asyncssh connection) stands: long-lived processes."""

    def __init__(self, owner: LocalConnection) -> None:
        self.owner = owner

    async def create_process(self, command: str) -> LocalProcess:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            cwd=self.owner.home,
            env=self.owner.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return LocalProcess(proc)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalConnection(RobotConnection):
    """``RobotConnection`` on the robot itself: commands through ``sh -c`` in the agent user's home (where
    a relative compose_dir lives, as over SSH), files written directly, the service reached on its port."""

    def __init__(
        self,
        robot: Robot,
        *,
        home: Path | None = None,
        docker_host: str | None = None,
        service_host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(robot, LocalSessions(self))  # type: ignore[arg-type]  # duck-typed: create_process
        self.home = (home or Path(os.environ.get("HOME") or Path.home())).resolve()
        env = {**os.environ, **(env or {})}  # ``env``: variables over the agent's own environment
        env["HOME"] = str(self.home)
        if docker_host is not None:
            env["DOCKER_HOST"] = docker_host
        self.env = env
        self.service_host = service_host

    def path(self, remote: str) -> Path:
        """A path as the robot's shell sees it: relative ones are relative to the home directory."""
        p = Path(remote)
        return p if p.is_absolute() else self.home / p

    async def run(
        self, command: str, *, timeout: float | None = 600, stdin: str | None = None
    ) -> CommandResult:
        """Run a shell command; rc, stdout, stderr come back whatever the exit status. A command past its
        timeout is killed with its process group (a detached ``setsid`` child is not in it)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                command,
                cwd=self.home,
                env=self.env,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise FleetError(
                f"Robot {self.robot.name}: cannot start a shell ({exc.strerror or exc})."
            ) from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout
            )
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await proc.wait()
            raise CommandTimeout(
                f"Robot {self.robot.name}: command timed out after {timeout:.0f} s: {command[:80]}."
            ) from None
        rc = proc.returncode if proc.returncode is not None else 255
        return CommandResult(
            rc if rc >= 0 else 128 - rc, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def upload(self, files: dict[str, bytes], remote_dir: str) -> int:
        """Write files into ``remote_dir`` (created); returns the bytes written."""
        d = self.path(remote_dir)
        try:
            await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
            for name, data in files.items():
                await asyncio.to_thread((d / name).write_bytes, data)
        except OSError as exc:
            raise FleetError(
                f"Robot {self.robot.name}: writing to {remote_dir} failed ({exc.strerror or exc})."
            ) from None
        return sum(len(b) for b in files.values())

    async def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        """Write (or append to) one file, creating its folder; a whole-file write goes to a temporary name
        renamed over the old file, so a reader never sees half of it."""
        p = self.path(path)

        def write() -> None:
            p.parent.mkdir(parents=True, exist_ok=True)
            if append:
                with open(p, "ab") as f:
                    f.write(data)
                return
            tmp = p.with_name(f"{p.name}.{secrets.token_hex(4)}.tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, p)
            finally:
                tmp.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise FleetError(
                f"Robot {self.robot.name}: writing {path} failed ({exc.strerror or exc})."
            ) from None

    @contextlib.asynccontextmanager
    async def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AsyncIterator[int]:
        """A loopback port that reaches the robot's service: its own port when it listens on loopback here,
        else a small TCP relay to ``service_host`` (the gate's client always talks to 127.0.0.1)."""
        target = remote_host if not _is_loopback(remote_host) else self.service_host
        if _is_loopback(target):
            yield remote_port
            return

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_r, up_w = await asyncio.open_connection(target, remote_port)
            except OSError:
                writer.close()
                return

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while chunk := await src.read(65536):
                        dst.write(chunk)
                        await dst.drain()
                except (OSError, asyncio.CancelledError):
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        dst.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def close(self) -> None:
        return None
