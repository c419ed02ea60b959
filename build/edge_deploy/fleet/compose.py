"""The compose bundle one release becomes on a robot: its ``.env`` (image digest, platform, port, the
compose files for a GPU and ROS 2), ``release.json`` and the compose files shipped with the tool; and the
names the robot side shares (compose project, service, systemd unit, edge-update.sh)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.release.tags import VersionError, check_version

PROJECT = "edge"
# A hand-over runs the new release as the other of two projects beside the running one (edge-update.sh);
# a release's .env names the one it runs as, and the engine-cache volume has one name for both.
PROJECTS = (PROJECT, "edge-b")
SERVICE = "edge-runtime"
COMPOSE_FILES = ("compose.yaml", "compose.jetson.yaml", "compose.ros2.yaml")
SYSTEMD_UNIT = "edge-deploy.service"
# The robot-side program that owns a switch (compose/edge-update.sh): switch, up --wait, wait for the
# operator's confirmation, else restore; it survives the operator's SSH connection.
UPDATE_SCRIPT = "edge-update.sh"
ENGINE_VOLUME = f"{PROJECT}_engine-cache"  # compose.yaml's volume, named so in both projects
# `docker ps` filters for the service container of whichever project runs it (never a one-off `run`).
SERVICE_FILTER = (
    f"--filter label=com.docker.compose.service={SERVICE} --filter label=com.docker.compose.oneoff=False"
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def release_dir_name(robot: Robot, version: object) -> str:
    """``version`` as a directory name under ``releases/``: only a semantic version is one (a robot's own
    state.json is input too)."""
    try:
        return check_version(version)
    except VersionError as exc:
        raise FleetError(f"Robot {robot.name}: {exc}") from None


def compose_bundle_dir() -> Path:
    """The compose/ files shipped with the tool (package data in a wheel, the repository's compose/ in a
    checkout)."""
    packaged = resources.files("edge_deploy").joinpath("compose_bundle")
    if packaged.is_dir():
        return Path(str(packaged))
    here = Path(__file__).resolve().parents[3] / "compose"
    if (here / "compose.yaml").is_file():
        return here
    raise FleetError("The robot compose bundle (compose/compose.yaml) is not installed with edge-deploy.")


def env_file(robot: Robot, req: DeployRequest) -> str:
    files = ["compose.yaml"]
    if robot.gpu:
        files.append("compose.jetson.yaml")
    if req.include_ros2:
        files.append("compose.ros2.yaml")
    lines = [
        "# Written by edge-deploy rollout; pin another digest here and `docker compose up -d` to roll back.",
        f"EDGE_IMAGE={req.image}",
        f"EDGE_RELEASE={req.version}",
        f"EDGE_PLATFORM={robot.platform}",
        f"EDGE_PORT={robot.service_port}",
        f"EDGE_HANDOVER_PORT={robot.gate_port}",
        f"EDGE_HEALTH_START_INTERVAL={robot.health_start_interval_s * 1000:.0f}ms",
        f"COMPOSE_FILE={':'.join(files)}",
        f"COMPOSE_PROJECT_NAME={PROJECT}",
        f"EDGE_ROS2={1 if req.include_ros2 else 0}",
        f"ROS_DOMAIN_ID={req.ros_domain_id}",
    ]
    return "\n".join(lines) + "\n"


def bundle_files(robot: Robot, req: DeployRequest) -> dict[str, bytes]:
    src = compose_bundle_dir()
    files = {name: (src / name).read_bytes() for name in COMPOSE_FILES if (src / name).is_file()}
    files[".env"] = env_file(robot, req).encode()
    release = {
        "version": req.version,
        "image": req.image,
        "robot": robot.name,
        "deployed_at": now_iso(),
        "required_backend": req.required_backend,  # a later rollback to this release gates on it too
        **req.release,
    }
    files["release.json"] = (json.dumps(release, indent=2) + "\n").encode()
    return files
