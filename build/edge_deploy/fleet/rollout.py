"""A rollout across the fleet: canary first, then waves; robots inside a wave update concurrently; the
rollout stops when failures exceed the threshold, and robots of later waves are never touched."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.robot import (
    FAILED,
    NOT_REACHED,
    PLANNED,
    REFUSED,
    UNREACHABLE,
    DeployRequest,
    RobotReleases,
    RobotResult,
)
from edge_deploy.fleet.ssh import HostKeyRefused, RobotUnreachable, connected

Progress = Callable[[str, str, str], None]  # robot, step, detail


def plan_waves(
    robots: list[Robot], *, canary: int = 0, wave_size: int | None = None, wave_percent: float | None = None
) -> list[list[Robot]]:
    """Split robots (in inventory order) into waves: an optional canary wave, then fixed-size waves."""
    if canary < 0:
        raise FleetError("--canary must be zero or more robots.")
    if wave_size is not None and wave_percent is not None:
        raise FleetError("Give either --wave-size or --wave-percent, not both.")
    if wave_size is not None and wave_size < 1:
        raise FleetError("--wave-size must be at least 1.")
    if wave_percent is not None and not 0 < wave_percent <= 100:
        raise FleetError("--wave-percent must be more than 0 and at most 100.")
    robots = list(robots)
    total = len(robots)
    waves: list[list[Robot]] = []
    if canary:
        waves.append(robots[:canary])
        robots = robots[canary:]
    if not robots:
        return waves
    if wave_percent is not None:
        size = max(1, math.ceil(total * wave_percent / 100))  # of the whole selection
    else:
        size = wave_size or len(robots)
    waves.extend(robots[i : i + size] for i in range(0, len(robots), size))
    return waves


@dataclass
class RolloutResult:
    """The summary of one rollout: per-robot outcomes with timings, and whether it stopped early."""

    version: str
    image: str
    results: list[RobotResult] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)
    stopped: bool = False
    stop_reason: str = ""
    dry_run: bool = False
    seconds: float = 0.0
    signature: str = ""  # what was done about the image signature before any robot was touched

    @property
    def failures(self) -> int:
        return sum(r.failed for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.stopped and self.failures == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "image": self.image,
            "ok": self.ok,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "dry_run": self.dry_run,
            "signature": self.signature,
            "seconds": round(self.seconds, 3),
            "failures": self.failures,
            "waves": self.waves,
            "robots": [r.to_dict() for r in self.results],
        }


async def on_robot(
    robot: Robot,
    version: str,
    fn: Callable[[RobotReleases], Awaitable[Any]],
    timings: dict[str, float] | None = None,
) -> Any:
    """``fn`` on one robot's releases; a refused host key, an unreachable robot or a failed command
    becomes that robot's result, so the other robots of a wave, a status or a rollback go on."""
    timings = {} if timings is None else timings
    retries: dict[str, int] = {}  # step → retries, filled by connect() and the robot's steps
    try:
        async with connected(robot, retries=retries) as conn:
            out = await fn(RobotReleases(conn, retries))
    except HostKeyRefused as exc:
        out = RobotResult(robot.name, version, REFUSED, str(exc), stage="connect", timings=timings)
    except RobotUnreachable as exc:
        out = RobotResult(robot.name, version, UNREACHABLE, str(exc), stage="connect", timings=timings)
    except FleetError as exc:
        out = RobotResult(robot.name, version, FAILED, str(exc), stage="ssh", timings=timings)
    if isinstance(out, RobotResult):
        out.retries = {k: v for k, v in retries.items() if v}
        out.timings["retries"] = sum(out.retries.values())
    return out


async def deploy_one(robot: Robot, req: DeployRequest, progress: Progress | None = None) -> RobotResult:
    """Connect and update one robot; connection problems become a result, not an exception."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    say = progress or (lambda *_: None)
    say(robot.name, "connect", f"{robot.host}:{robot.port}")

    async def update(releases: RobotReleases) -> RobotResult:
        timings["connect"] = round(time.monotonic() - t0, 3)
        say(robot.name, "deploy", req.version)
        return await releases.deploy(req, timings)

    res: RobotResult = await on_robot(robot, req.version, update, timings)
    timings["total"] = round(time.monotonic() - t0, 3)
    say(robot.name, res.outcome, res.reason)
    return res


class Rollout:
    """Deploy one release to a list of robots in waves with a failure budget."""

    def __init__(
        self,
        robots: list[Robot],
        req: DeployRequest,
        *,
        canary: int = 0,
        wave_size: int | None = None,
        wave_percent: float | None = None,
        max_failures: int = 0,
        concurrency: int = 8,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> None:
        if max_failures < 0:
            raise FleetError("--max-failures must be zero or more.")
        if not robots:
            raise FleetError("No robots to roll out to.")
        self.robots = robots
        self.req = req
        self.waves = plan_waves(robots, canary=canary, wave_size=wave_size, wave_percent=wave_percent)
        self.canary = canary
        self.max_failures = max_failures
        self.concurrency = max(1, concurrency)
        self.dry_run = dry_run
        self.progress = progress

    async def run(self) -> RolloutResult:
        t0 = time.monotonic()
        out = RolloutResult(
            self.req.version,
            self.req.image,
            dry_run=self.dry_run,
            waves=[[r.name for r in w] for w in self.waves],
        )
        sem = asyncio.Semaphore(self.concurrency)

        async def one(robot: Robot) -> RobotResult:
            async with sem:
                return await deploy_one(robot, self.req, self.progress)

        for i, wave in enumerate(self.waves):
            if out.stopped:
                out.results.extend(
                    RobotResult(r.name, self.req.version, NOT_REACHED, "the rollout stopped before this wave")
                    for r in wave
                )
                continue
            if self.dry_run:
                out.results.extend(
                    RobotResult(r.name, self.req.version, PLANNED, f"wave {i + 1}") for r in wave
                )
                continue
            results = await asyncio.gather(*(one(r) for r in wave))
            out.results.extend(results)
            is_canary = self.canary > 0 and i == 0
            if is_canary and any(r.failed for r in results):
                out.stopped, out.stop_reason = True, "the canary wave failed"
            elif out.failures > self.max_failures:
                out.stopped = True
                out.stop_reason = (
                    f"{out.failures} robot(s) failed, more than --max-failures {self.max_failures}"
                )
        out.seconds = time.monotonic() - t0
        return out
