"""Each simulated robot's engine: its own ``dockerd`` (own data root, exec root, pidfile and socket, no
bridge), with a runtime named ``nvidia`` that is plain runc, and the compose plugin its user needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from edge_deploy.fleet import FleetError
from edge_deploy.simulation.processes import alive, terminate
from edge_deploy.simulation.state import SimRobot, Simulation


def host_bin() -> Path | None:
    """Where the host set-up put dockerd/containerd/runc (``scripts/host-setup --env`` prints it)."""
    for cand in (os.environ.get("EDGE_HOST_BIN"), "/opt/edge-deploy/host/bin"):
        if cand and (Path(cand) / "dockerd").is_file():
            return Path(cand)
    which = shutil.which("dockerd")
    return Path(which).parent if which else None


PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
)


def give_compose_plugin(robot: SimRobot) -> None:
    """Robots run `docker compose`: when the plugin is not installed system-wide, link the one beside the
    host's engine binaries into the robot user's own plugin directory."""
    if any((Path(d) / "docker-compose").is_file() for d in PLUGIN_DIRS):
        return
    bin_dir = host_bin()
    plugin = bin_dir / "docker-compose" if bin_dir else None
    if plugin is None or not plugin.is_file():
        return
    target = Path(robot.home) / ".docker" / "cli-plugins"
    target.mkdir(parents=True, exist_ok=True)
    link = target / "docker-compose"
    link.unlink(missing_ok=True)
    link.symlink_to(plugin)
    for p in (target.parent, target):
        shutil.chown(p, robot.user, robot.user)


NVIDIA_RUNTIME = "nvidia"  # the name compose.jetson.yaml asks for


def _runc() -> str:
    """runc for the ``nvidia`` stand-in runtime: beside the host set-up's engine binaries, else on PATH."""
    bin_dir = host_bin()
    search = os.pathsep.join([*([str(bin_dir)] if bin_dir else []), os.environ.get("PATH", "/usr/bin:/bin")])
    return shutil.which("runc", path=search) or shutil.which("runc", path="/usr/sbin:/usr/bin") or "runc"


def write_daemon_config(rdir: Path, robot: SimRobot, exec_root: Path, registry: str) -> Path:
    cfg = rdir / "daemon.json"
    registries = sorted({registry, "localhost:5000", "127.0.0.1:5000"})
    cfg.write_text(
        json.dumps(
            {
                "data-root": robot.data_root,
                "exec-root": str(exec_root),
                "pidfile": str(rdir / "dockerd.pid"),
                "hosts": [f"unix://{robot.socket}"],
                "group": "docker",
                "bridge": "none",
                "iptables": False,
                "ip6tables": False,
                "ip-masq": False,
                "features": {"containerd-snapshotter": True},
                "insecure-registries": registries,
                # Stand-in of the NVIDIA container runtime: plain runc, no GPU (see the module docstring).
                "runtimes": {NVIDIA_RUNTIME: {"path": _runc()}},
                "log-driver": "json-file",
                "log-opts": {"max-size": "10m", "max-file": "2"},
            },
            indent=2,
        )
        + "\n"
    )
    return cfg


def _wait_docker(sock: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FleetError(
                f"The robot engine for {sock} exited during start-up (see dockerd.log beside it)."
            )
        p = subprocess.run(
            ["docker", "-H", f"unix://{sock}", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
        )
        if p.returncode == 0:
            return
        time.sleep(0.5)
    raise FleetError(f"The robot engine at {sock} did not answer within {timeout:.0f} s.")


def stop_dockerd(sim: Simulation, robot: SimRobot) -> None:
    """Stop one robot's engine (its containers stop with it), e.g. to move its data root."""
    terminate(robot.dockerd_pid, str(Path(sim.state_dir) / "robots" / robot.name / "daemon.json"), timeout=60)
    robot.dockerd_pid = None
    sim.save()


def start_dockerd(sim: Simulation, robot: SimRobot) -> None:
    rdir = Path(sim.state_dir) / "robots" / robot.name
    cfg = rdir / "daemon.json"
    if alive(robot.dockerd_pid, str(cfg)):
        return
    bin_dir = host_bin()
    if bin_dir is None:
        raise FleetError("No dockerd found: run scripts/host-setup first (it installs the engine binaries).")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("DOCKER_HOST", None)
    with open(rdir / "dockerd.log", "ab") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "dockerd"), "--config-file", str(cfg)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    robot.dockerd_pid = proc.pid
    sim.save()
    _wait_docker(robot.socket, proc)


def unmount_under(prefix: Path) -> None:
    """Unmount what a stopped engine left below ``prefix`` (its netns file, overlay snapshots), deepest
    first, so the directory can be removed."""
    root = str(prefix).rstrip("/") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for mnt in sorted((m for m in mounts if m.startswith(root) or m == root[:-1]), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
