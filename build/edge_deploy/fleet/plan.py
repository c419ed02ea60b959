"""The waves of a rollout: an optional canary wave, then fixed-size or proportional waves, in inventory
order, every robot exactly once."""

from __future__ import annotations

import math

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot


def plan_waves(
    robots: list[Robot], *, canary: int = 0, wave_size: int | None = None, wave_percent: float | None = None
) -> list[list[Robot]]:
    """Split robots (in inventory order) into waves: an optional canary wave, then fixed-size waves
    (``wave_size``, or ``wave_percent`` of the whole selection; neither: one wave)."""
    if canary < 0:
        raise FleetError("`canary` must be zero or more robots.", option="canary")
    if wave_size is not None and wave_percent is not None:
        raise FleetError(
            "Give either `wave_size` or `wave_percent`, not both.", option=("wave_size", "wave_percent")
        )
    if wave_size is not None and wave_size < 1:
        raise FleetError("`wave_size` must be at least 1.", option="wave_size")
    if wave_percent is not None and not 0 < wave_percent <= 100:
        raise FleetError("`wave_percent` must be more than 0 and at most 100.", option="wave_percent")
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
