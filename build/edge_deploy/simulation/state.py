"""What a simulated fleet is, as recorded in ``<state>/simulation.json``: its robots, their ports, users,
engine sockets and the PIDs of the sshd and dockerd started for them (in pull mode also of their agents,
the site cache, the pushgateway and Prometheus)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError

DEFAULT_STATE_ROOT = Path(os.environ.get("EDGE_FLEET_STATE", "/var/lib/edge-deploy/fleet"))
RUN_ROOT = Path("/run/edge-deploy/fleet")


def save_record(record: Any, path: Path) -> None:
    """Write a dataclass as JSON through a temporary file renamed over ``path``: a reader sees the old
    record or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class SimRobot:
    name: str
    user: str
    ssh_port: int
    service_port: int
    home: str
    socket: str
    data_root: str
    sshd_pid: int | None = None
    dockerd_pid: int | None = None
    agent_pid: int | None = None  # pull mode: the robot's agent (simulation/pull.py)


@dataclass
class Simulation:
    name: str
    state_dir: str
    robots: list[SimRobot] = field(default_factory=list)
    engines: bool = True
    mode: str = "ssh"  # "pull": robots run agents behind a site cache (simulation/pull.py)
    pull: dict[str, Any] = field(default_factory=dict)  # pull mode's addresses and PIDs

    @property
    def fleet_file(self) -> Path:
        return Path(self.state_dir) / "fleet.yaml"

    def robot(self, name: str) -> SimRobot:
        for r in self.robots:
            if r.name == name:
                return r
        raise FleetError(f"Simulated robot {name!r} is not part of fleet {self.name!r}.")

    def save(self) -> None:
        save_record(self, Path(self.state_dir) / "simulation.json")

    @classmethod
    def load(cls, name: str, state_root: Path = DEFAULT_STATE_ROOT) -> Simulation:
        path = state_root / name / "simulation.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"No simulated fleet named {name!r} under {state_root}.") from None
        d["robots"] = [SimRobot(**r) for r in d["robots"]]
        return cls(**d)
