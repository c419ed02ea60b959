"""SSH to one robot through asyncssh, host keys checked against the inventory's known_hosts file: an
unknown or changed key is refused, never accepted silently. Files are written over SFTP, so their content
never passes through a shell; connecting is retried a few times with backoff (a robot's sshd restarting,
a dropped Wi-Fi association), a refused host key or login never."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import secrets
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot

log = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3
RETRY_WAIT_S = 1.0  # the first backoff; it doubles per retry (1 s, 2 s)


class RobotUnreachable(FleetError):
    """The robot did not answer on SSH (offline, wrong address, timeout)."""


class HostKeyRefused(FleetError):
    """The robot's SSH host key is unknown or differs from the known_hosts entry."""


class CommandTimeout(FleetError):
    """A command on the robot did not finish in time (the SSH session may still be fine, the robot slow)."""


@dataclass
class CommandResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, n: int = 300) -> str:
        """The last words of stderr (or stdout), for one-sentence error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " ")
        return text[-n:]


class RobotConnection:
    """One open SSH connection: run commands, upload files by SFTP, forward a port to the robot."""

    def __init__(self, robot: Robot, conn: asyncssh.SSHClientConnection) -> None:
        self.robot = robot
        self.conn = conn
        self._sftp: asyncssh.SFTPClient | None = None

    async def run(
        self, command: str, *, timeout: float | None = 600, stdin: str | None = None
    ) -> CommandResult:
        """Run a shell command; rc, stdout, stderr come back whatever the exit status."""
        try:
            r = await asyncio.wait_for(self.conn.run(command, check=False, input=stdin), timeout)
        except asyncio.TimeoutError:
            raise CommandTimeout(
                f"Robot {self.robot.name}: command timed out after {timeout:.0f} s: {command[:80]}."
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise RobotUnreachable(f"Robot {self.robot.name}: the SSH connection broke ({exc}).") from None
        rc = r.exit_status if r.exit_status is not None else 255
        return CommandResult(rc, str(r.stdout or ""), str(r.stderr or ""))

    async def check(self, command: str, what: str, *, timeout: float | None = 600) -> str:
        r = await self.run(command, timeout=timeout)
        if not r.ok:
            raise FleetError(f"Robot {self.robot.name}: {what} failed (exit {r.rc}): {r.tail()}.")
        return r.stdout

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        """One SFTP session per connection, opened on first use (paths are relative to the home directory)."""
        if self._sftp is None:
            self._sftp = await self.conn.start_sftp_client()
        return self._sftp

    async def upload(self, files: dict[str, bytes], remote_dir: str) -> int:
        """Write files into ``remote_dir`` (created) over SFTP; returns the bytes sent."""
        sent = 0
        try:
            sftp = await self._sftp_client()
            await sftp.makedirs(remote_dir, exist_ok=True)
            for name, data in files.items():
                async with sftp.open(f"{remote_dir}/{name}", "wb") as f:
                    await f.write(data)
                sent += len(data)
        except (OSError, asyncssh.Error) as exc:
            raise FleetError(f"Robot {self.robot.name}: uploading to {remote_dir} failed ({exc}).") from None
        return sent

    async def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        """Write (or append to) one file over SFTP, creating its folder. A whole-file write goes to a
        temporary name and is renamed over the old file, so a reader never sees half of it."""
        try:
            sftp = await self._sftp_client()
            parent = posixpath.dirname(path)
            if parent:
                await sftp.makedirs(parent, exist_ok=True)
            if append:
                async with sftp.open(path, "ab") as f:
                    await f.write(data)
                return
            tmp = f"{path}.{secrets.token_hex(4)}.tmp"
            async with sftp.open(tmp, "wb") as f:
                await f.write(data)
            try:
                await sftp.posix_rename(tmp, path)
            except asyncssh.SFTPOpUnsupported:  # a server without OpenSSH's extension
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(path)
                await sftp.rename(tmp, path)
        except asyncssh.SFTPError as exc:
            raise FleetError(f"Robot {self.robot.name}: writing {path} failed ({exc.reason}).") from None
        except (OSError, asyncssh.Error) as exc:
            raise RobotUnreachable(f"Robot {self.robot.name}: the SSH connection broke ({exc}).") from None

    @contextlib.asynccontextmanager
    async def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AsyncIterator[int]:
        """Forward a free local port to ``remote_host:remote_port`` as seen from the robot."""
        listener = await self.conn.forward_local_port("127.0.0.1", 0, remote_host, remote_port)
        try:
            yield listener.get_port()
        finally:
            listener.close()
            await listener.wait_closed()

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self.conn.close()
        with contextlib.suppress(Exception):
            await self.conn.wait_closed()


def _known_hosts(robot: Robot) -> str | None:
    path = robot.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    if not path.is_file():
        raise HostKeyRefused(
            f"Robot {robot.name}: no known_hosts file ({path}), so its host key cannot be "
            f"checked; refusing to connect."
        )
    return str(path)


def backoff(
    what: str,
    attempts: int,
    retry_on: type[BaseException],
    counts: dict[str, int],
    *,
    first_wait_s: float,
    max_wait_s: float,
    prefix: str = "",
) -> AsyncRetrying:
    """The one retry policy for talking to robots: at most ``attempts`` tries of ``retry_on`` with exponential
    backoff from ``first_wait_s``, each retry logged and counted in ``counts[what]`` (shown in ``--json``);
    any other error, and the last one, propagate as they are."""

    def before_sleep(state: RetryCallState) -> None:
        counts[what] = counts.get(what, 0) + 1
        wait = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s%s; retrying in %.1f s (attempt %d of %d).",
            prefix,
            exc,
            wait,
            state.attempt_number + 1,
            attempts,
        )

    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=first_wait_s, min=0, max=max_wait_s),
        retry=retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )


async def connect(
    robot: Robot, *, timeout: float | None = None, retries: dict[str, int] | None = None
) -> RobotConnection:
    """Open an SSH connection with strict host-key checking and a bounded connect time. An unreachable
    robot is tried CONNECT_ATTEMPTS times with backoff (logged; counted in ``retries["connect"]``); a refused
    host key or login is final at once."""
    counts = retries if retries is not None else {}
    async for attempt in backoff(
        "connect", CONNECT_ATTEMPTS, RobotUnreachable, counts, first_wait_s=RETRY_WAIT_S, max_wait_s=30
    ):
        with attempt:
            return await _connect_once(robot, timeout)
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def _connect_once(robot: Robot, timeout: float | None) -> RobotConnection:
    known_hosts = _known_hosts(robot)
    keys = [str(robot.ssh_key)] if robot.ssh_key else None
    t = timeout if timeout is not None else robot.connect_timeout_s
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                robot.host,
                robot.port,
                username=robot.user,
                known_hosts=known_hosts,
                client_keys=keys,
                agent_path=None if keys else (),
                connect_timeout=t,
                keepalive_interval=15,
                keepalive_count_max=3,
            ),
            t + 5,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyRefused(
            f"Robot {robot.name}: the SSH host key of {robot.host}:{robot.port} is unknown "
            f"or has changed ({exc.reason}); refusing to connect."
        ) from None
    except asyncssh.PermissionDenied:
        raise FleetError(
            f"Robot {robot.name}: SSH login as {robot.user!r} was refused "
            f"(check ssh_key and the robot's authorized_keys)."
        ) from None
    except (asyncio.TimeoutError, TimeoutError):
        raise RobotUnreachable(
            f"Robot {robot.name}: no SSH answer from {robot.host}:{robot.port} within {t:.0f} s."
        ) from None
    except (OSError, asyncssh.Error) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise RobotUnreachable(
            f"Robot {robot.name}: cannot reach {robot.host}:{robot.port} over SSH ({reason})."
        ) from None
    return RobotConnection(robot, conn)


@contextlib.asynccontextmanager
async def connected(
    robot: Robot, *, timeout: float | None = None, retries: dict[str, int] | None = None
) -> AsyncIterator[RobotConnection]:
    c = await connect(robot, timeout=timeout, retries=retries)
    try:
        yield c
    finally:
        await c.close()


def q(value: str) -> str:
    """Shell-quote one word for a remote command line."""
    return shlex.quote(value)
