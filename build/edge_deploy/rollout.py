"""Deprecated: the fleet operations are ``edge_deploy.fleet`` (``deploy_release(fleet, RolloutOptions(...))``,
``rollback(fleet, RollbackOptions(...))``). This module keeps the keyword form of one release ago working,
with a DeprecationWarning, and goes away in the next one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import edge_deploy.fleet as _fleet
from edge_deploy.fleet import operations
from edge_deploy.fleet.inventory import Fleet
from edge_deploy.fleet.options import RollbackOptions, RolloutOptions, options_from_keywords
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.rollout import RolloutResult

_SAME = {"device_history", "fleet_infer", "fleet_status", "plan_waves", "verify_signature", "RolloutResult"}

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


def __getattr__(name: str) -> Any:
    """The names whose form did not change, from ``edge_deploy.fleet``."""
    if name in _SAME:
        return getattr(_fleet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
