"""The robot fleet, and the one public API of this area: roll a release out in waves (``deploy_release``
with ``RolloutOptions``), roll back (``rollback`` with ``RollbackOptions``), and read ``fleet_status``,
``fleet_infer`` and ``device_history``.

The flow, one job per module: ``inventory`` (fleet.yaml) → ``options`` (what the operator asks) → ``plan``
(waves) → ``rollout`` (the wave engine) → ``deploy`` (one robot's state machine) → ``switch`` (the switch
edge-update.sh owns on the robot) → ``gate`` (the health gate, an HTTP client of the service) → ``store``
(the robot's release store and its docker/systemd commands) → ``compose`` (the bundle a release becomes)
→ ``ssh``; ``outcome`` holds the words every operation reports in, ``status`` one robot's status.

Names other than ``FleetError`` load on first use, so importing this package (every fleet module does, for
``FleetError``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeError


class FleetError(EdgeError):
    """The fleet inventory, a robot connection or a rollout cannot proceed; one sentence says why."""


if TYPE_CHECKING:
    from edge_deploy.fleet.operations import (
        deploy_release,
        device_history,
        fleet_infer,
        fleet_status,
        rollback,
        verify_signature,
    )
    from edge_deploy.fleet.options import RollbackOptions, RolloutOptions
    from edge_deploy.fleet.outcome import HistoryEntry, InferAnswer, RobotResult, RobotStatus
    from edge_deploy.fleet.plan import plan_waves
    from edge_deploy.fleet.rollout import Rollout, RolloutResult

_LAZY = {
    "deploy_release": "operations",
    "device_history": "operations",
    "fleet_infer": "operations",
    "fleet_status": "operations",
    "rollback": "operations",
    "verify_signature": "operations",
    "RollbackOptions": "options",
    "RolloutOptions": "options",
    "HistoryEntry": "outcome",
    "InferAnswer": "outcome",
    "RobotResult": "outcome",
    "RobotStatus": "outcome",
    "plan_waves": "plan",
    "Rollout": "rollout",
    "RolloutResult": "rollout",
}

__all__ = [
    "FleetError",
    "HistoryEntry",
    "InferAnswer",
    "RobotResult",
    "RobotStatus",
    "RollbackOptions",
    "Rollout",
    "RolloutOptions",
    "RolloutResult",
    "deploy_release",
    "device_history",
    "fleet_infer",
    "fleet_status",
    "plan_waves",
    "rollback",
    "verify_signature",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
