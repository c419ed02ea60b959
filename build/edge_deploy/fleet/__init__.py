"""The robot fleet: inventory (fleet.yaml), SSH to each robot, what one update does on a robot, rollouts
across the fleet in waves, and a simulated fleet of real Docker engines for tests and the quickstart."""

from __future__ import annotations

from edge_runtime.errors import EdgeError


class FleetError(EdgeError):
    """The fleet inventory, a robot connection or a rollout cannot proceed; one sentence says why."""


__all__ = ["FleetError"]
