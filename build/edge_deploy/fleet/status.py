"""One robot's status: the release its state.json records, what really runs (a release or image pinned by
hand shows as drift), Docker's health of the service, the versions marked bad there and the engine the
running service reports (with several models, each model's readiness and backend)."""

from __future__ import annotations

from typing import Any

from edge_deploy.fleet.gate import service_check
from edge_deploy.fleet.outcome import RobotStatus
from edge_deploy.fleet.store import RobotStore
from edge_deploy.fleet.switch import PENDING


async def robot_status(store: RobotStore, known: dict[str, tuple[str, str]]) -> RobotStatus:
    """``known``: digest → (version, repository@digest) of the operator's releases, to name what runs."""
    state = await store.read_state()
    health = await store.container_health()
    parts = health.split()
    info: RobotStatus = {
        "robot": store.robot.name,
        "version": state.get("current"),
        "previous": state.get("previous"),
        "image": parts[2] if len(parts) > 2 else state.get("image"),
        "container": parts[0] if parts else "absent",
        "health": parts[1] if len(parts) > 1 else "absent",
        "last_result": state.get("last_result"),
        "updated": state.get("updated"),
        "drift": None,
    }
    if state.get("last_result") in PENDING:
        info["last_result"] = f"{state['last_result']} (step {state.get('step')}, on the robot)"
    found = await store.drift(state, known)
    if found is not None:  # what runs is not the release state.json records
        info["drift"] = found
        info["version"] = found["running"] or "unknown image"
        info["recorded"] = state.get("current")
        info["last_result"] = "pinned by hand"
    info["bad_versions"] = sorted(await store.bad_versions())
    if info["container"] == "running":
        engine: dict[str, Any]
        try:
            engine = (await service_check(store.conn, smoke=False, timeout_s=10)).get("readyz") or {}
        except Exception as exc:  # an unreachable service is part of the status, not a failure of it
            engine = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        info["engine"] = engine
        models = engine.get("models")
        if isinstance(models, dict):  # a release of several models: each one's readiness and backend
            info["models"] = {
                str(name): (
                    str(m.get("backend") or "ready")
                    if m.get("ready")
                    else f"not ready: {m.get('reason') or '-'}"
                )[:80]
                for name, m in sorted(models.items())
                if isinstance(m, dict)
            }
    return info
