"""Deprecated: the fleet operations are ``edge_deploy.fleet`` (``deploy_release(fleet, RolloutOptions(...))``,
``rollback(fleet, RollbackOptions(...))``). This module keeps the keyword form of one release ago working,
with a DeprecationWarning, and goes away in the next one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from edge_deploy.fleet import operations
from edge_deploy.fleet.inventory import Fleet
from edge_deploy.fleet.operations import device_history, fleet_infer, fleet_status, verify_signature
from edge_deploy.fleet.options import RollbackOptions, RolloutOptions, options_from_keywords
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.plan import plan_waves
from edge_deploy.fleet.rollout import RolloutResult

__all__ = [
    "RolloutResult",
    "deploy_release",
    "device_history",
    "fleet_infer",
    "fleet_status",
    "plan_waves",
    "rollback",
    "verify_signature",
]

warnings.warn(
    "edge_deploy.rollout is deprecated: import from edge_deploy.fleet (deploy_release and rollback take "
    "RolloutOptions and RollbackOptions).",
    DeprecationWarning,
    stacklevel=2,
)


def deploy_release(version: str, fleet: Path | Fleet, *, progress: Any = None, **kw: Any) -> RolloutResult:
    """``edge_deploy.fleet.deploy_release`` in the keyword form of one release ago."""
    return operations.deploy_release(
        fleet, options_from_keywords(RolloutOptions, version=version, **kw), progress
    )


def rollback(fleet: Path | Fleet, **kw: Any) -> list[RobotResult]:
    """``edge_deploy.fleet.rollback`` in the keyword form of one release ago."""
    return operations.rollback(fleet, options_from_keywords(RollbackOptions, **kw))
