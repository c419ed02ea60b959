"""A rollout across the fleet: canary first, then waves; robots inside a wave update concurrently; the
rollout stops when failures exceed the threshold, and robots of later waves are never touched."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import Progress, deploy_one
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.options import DeployRequest, RolloutOptions
from edge_deploy.fleet.outcome import NOT_REACHED, PLANNED, RobotResult
from edge_deploy.fleet.plan import plan_waves


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


class Rollout:
    """Deploy ``req`` to a list of robots in the waves and with the failure budget ``options`` ask for."""

    def __init__(
        self,
        robots: list[Robot],
        req: DeployRequest,
        options: RolloutOptions,
        progress: Progress | None = None,
    ) -> None:
        if options.max_failures < 0:
            raise FleetError("`max_failures` must be zero or more.", option="max_failures")
        if not robots:
            raise FleetError("No robots to roll out to.")
        self.robots = robots
        self.req = req
        self.options = options
        self.waves = plan_waves(
            robots, canary=options.canary, wave_size=options.wave_size, wave_percent=options.wave_percent
        )
        self.progress = progress

    async def run(self) -> RolloutResult:
        opts = self.options
        t0 = time.monotonic()
        out = RolloutResult(
            self.req.version,
            self.req.image,
            dry_run=opts.dry_run,
            waves=[[r.name for r in w] for w in self.waves],
        )
        sem = asyncio.Semaphore(max(1, opts.concurrency))

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
            if opts.dry_run:
                out.results.extend(
                    RobotResult(r.name, self.req.version, PLANNED, f"wave {i + 1}") for r in wave
                )
                continue
            results = await asyncio.gather(*(one(r) for r in wave))
            out.results.extend(results)
            is_canary = opts.canary > 0 and i == 0
            if is_canary and any(r.failed for r in results):
                out.stopped, out.stop_reason = True, "the canary wave failed"
            elif out.failures > opts.max_failures:
                out.stopped = True
                out.stop_reason = f"{out.failures} robot(s) failed, more than the {opts.max_failures} allowed"
        out.seconds = time.monotonic() - t0
        return out
