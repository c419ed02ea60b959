"""A simulated fleet on one host, made of real parts: each robot is its own ``dockerd`` (own data root,
exec root, pidfile and socket, no bridge), so its image store and the bytes it pulls are real, plus its own
``sshd`` on 127.0.0.1:22NN with its own host key and user, whose sessions get ``DOCKER_HOST`` pointing at
that robot's engine. Containers run as arm64 under QEMU. Processes are started and stopped by the PIDs
recorded in ``<state>/simulation.json``; nothing is ever killed by name.

Each engine registers a runtime named ``nvidia`` that is plain runc: a stand-in for the NVIDIA container
runtime (which needs a GPU and its driver), so a simulated robot can be ``gpu: true`` and run the real
compose.jetson.yaml (``runtime: nvidia``). The container gets no GPU from it; TensorRT in it finds none,
``auto`` falls back to ONNX Runtime on the CPU, and the fleet's gate must refuse that (docs/fleet.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Fleet, Robot, dump_fleet
from edge_deploy.simulation.dockerd import (
    give_compose_plugin,
    host_bin,
    start_dockerd,
    stop_dockerd,
    unmount_under,
    write_daemon_config,
)
from edge_deploy.simulation.processes import alive, free_port, run, terminate
from edge_deploy.simulation.sshd import ensure_user, kill_sshd, start_sshd, stop_sshd, write_sshd_config
from edge_deploy.simulation.state import DEFAULT_STATE_ROOT, RUN_ROOT, SimRobot, Simulation

DEFAULT_REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_STATE_ROOT",
    "SimRobot",
    "Simulation",
    "host_bin",
    "kill_sshd",
    "list_simulations",
    "simulate",
    "simulated",
    "start_dockerd",
    "start_sshd",
    "stop",
    "stop_dockerd",
    "stop_sshd",
]


def simulate(
    robots: int,
    name: str = "sim",
    *,
    state_root: Path = DEFAULT_STATE_ROOT,
    engines: bool = True,
    registry: str = DEFAULT_REGISTRY,
    ssh_port_base: int = 2201,
    service_port_base: int = 18081,
    min_free_mb: int = 512,
    lock_wait_s: float = 10.0,
    platform: str = "linux/arm64",
    gpu: bool = False,
    allow_cpu_fallback: bool = False,
    mode: str = "ssh",
    agents: dict[str, Any] | None = None,
    site_upstream: str | None = None,
) -> Simulation:
    """Start (or restart) a simulated fleet and write its ``fleet.yaml``; ``engines=False`` starts only the
    SSH side (for tests of the SSH layer on machines without Docker). Robots pull ``platform`` images:
    linux/arm64 (Jetson, under QEMU here) unless an amd64 runtime variant is wanted on x86 hosts.
    ``gpu``: robots are ``gpu: true`` as Jetsons are (compose.jetson.yaml on the ``nvidia`` stand-in
    runtime); with no GPU they serve ONNX Runtime on the CPU, which fails their gate unless
    ``allow_cpu_fallback`` (or the release) allows it.
    ``mode="pull"`` also starts a site cache, a pushgateway and Prometheus (simulation/pull.py) and, with
    ``agents`` (repository, channel, public_key, ...: pull.start_agents's options), one agent per robot."""
    if mode not in ("ssh", "pull"):
        raise FleetError(f"A simulated fleet's mode is ssh or pull, not {mode!r}.")
    if not 1 <= robots <= 50:
        raise FleetError("A simulated fleet has from 1 to 50 robots.")
    if os.geteuid() != 0:
        raise FleetError("Simulating a fleet needs root (it creates users and starts sshd and dockerd).")
    if not shutil.which("ssh-keygen"):
        raise FleetError("ssh-keygen is not installed; run scripts/host-setup (or install openssh-client).")
    state = state_root / name
    existing: Simulation | None = None
    with contextlib.suppress(FleetError):
        existing = Simulation.load(name, state_root)
    if existing is not None:
        stop(existing)
        sim = existing
        sim.engines = engines
    else:
        sim = Simulation(name=name, state_dir=str(state), engines=engines)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)
    for parent in state.resolve().parents:  # robot users must reach their homes under the state dir
        if not os.stat(parent).st_mode & 0o001:
            raise FleetError(
                f"The simulated robots' users cannot enter {parent} (mode "
                f"{os.stat(parent).st_mode & 0o777:o}); choose a state root they can traverse."
            )
    key = state / "id_ed25519"
    if not key.is_file():
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edge-deploy@{name}", "-f", str(key)],
            "creating the fleet's SSH key",
        )
    subprocess.run(["groupadd", "-f", "docker"], check=False, capture_output=True)
    taken: set[int] = set()
    known_lines = []
    for i in range(1, robots + 1):
        rname = f"{name}-robot-{i}"
        old = next((r for r in sim.robots if r.name == rname), None)
        rdir = state / "robots" / rname
        rdir.mkdir(parents=True, exist_ok=True)
        exec_root = RUN_ROOT / name / str(i)
        exec_root.mkdir(parents=True, exist_ok=True)
        robot = old or SimRobot(
            name=rname,
            user=f"edge-{name}-{i}"[:32],
            ssh_port=free_port(ssh_port_base, taken),
            service_port=free_port(service_port_base, taken),
            home=str(rdir / "home"),
            socket=str(RUN_ROOT / name / f"{i}.sock"),
            data_root=str(rdir / "docker"),
        )
        taken.update({robot.ssh_port, robot.service_port})
        if old is None:
            sim.robots.append(robot)
        ensure_user(robot.user, Path(robot.home))
        hostkey = rdir / "ssh_host_ed25519_key"
        if not hostkey.is_file():
            run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", rname, "-f", str(hostkey)],
                f"creating the host key of {rname}",
            )
        ssh_dir = Path(robot.home) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        shutil.chown(ssh_dir, robot.user, robot.user)
        shutil.chown(ssh_dir / "authorized_keys", robot.user, robot.user)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        os.chmod(robot.home, 0o755)
        pub = Path(f"{hostkey}.pub").read_text().split()
        known_lines.append(f"[127.0.0.1]:{robot.ssh_port} {pub[0]} {pub[1]}")
        give_compose_plugin(robot)
        write_sshd_config(rdir, robot)
        write_daemon_config(rdir, robot, exec_root, registry)
    sim.robots = sim.robots[:robots]
    (state / "known_hosts").write_text("\n".join(known_lines) + "\n")
    sim.save()
    try:
        for robot in sim.robots:
            if engines:
                start_dockerd(sim, robot)
            start_sshd(sim, robot)
            sim.save()
        sim.mode = mode
        if mode == "pull":
            from edge_deploy.simulation import pull

            pull.start_control_plane(sim, registry, site_upstream=site_upstream)
            if agents:
                pull.start_agents(
                    sim, platform=platform, gpu=gpu, allow_cpu_fallback=allow_cpu_fallback, **agents
                )
    except BaseException:
        stop(sim)
        raise
    fleet = Fleet(
        name=name,
        robots=tuple(
            Robot(
                name=r.name,
                host="127.0.0.1",
                port=r.ssh_port,
                user=r.user,
                ssh_key=key,
                known_hosts=state / "known_hosts",
                jetson_model="orin_nano",
                groups=("canary",) if i == 0 else ("main",),
                labels={"simulated": "true"},
                compose_dir="edge",
                service_port=r.service_port,
                platform=platform,
                gpu=gpu,
                allow_cpu_fallback=allow_cpu_fallback,
                min_free_mb=min_free_mb,
                lock_wait_s=lock_wait_s,
                # A healthcheck is a Python start: ~0.1 s natively, seconds under QEMU on a busy host.
                health_start_interval_s=1.0 if _native(platform) else 5.0,
            )
            for i, r in enumerate(sim.robots)
        ),
    )
    sim.fleet_file.write_text(
        "# Generated by `edge-deploy fleet sim start`; robots are local dockerd + sshd.\n" + dump_fleet(fleet)
    )
    return sim


def _native(platform: str) -> bool:
    """Whether ``platform`` images run natively on this host (not under QEMU)."""
    machine = os.uname().machine
    return platform.split("/")[-1] == {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def stop(sim: Simulation, *, purge: bool = False) -> None:
    """Stop every recorded sshd and dockerd by PID (the engines stop their containers); ``purge`` also
    deletes the robots' users and state."""
    if sim.pull or any(r.agent_pid for r in sim.robots):
        from edge_deploy.simulation.pull import stop_pull

        stop_pull(sim)
    for robot in sim.robots:
        rdir = Path(sim.state_dir) / "robots" / robot.name
        stop_sshd(sim, robot)
        terminate(robot.dockerd_pid, str(rdir / "daemon.json"), timeout=60)
        robot.dockerd_pid = None
    if Path(sim.state_dir).is_dir():
        sim.save()
    if purge:
        for robot in sim.robots:
            subprocess.run(["userdel", robot.user], capture_output=True)
            unmount_under(Path(robot.data_root))
        unmount_under(RUN_ROOT / sim.name)
        shutil.rmtree(sim.state_dir, ignore_errors=True)
        shutil.rmtree(RUN_ROOT / sim.name, ignore_errors=True)


@contextlib.contextmanager
def simulated(
    robots: int, name: str, *, state_root: Path | None = None, attempts: int = 1, **options: Any
) -> Iterator[Simulation]:
    """A simulated fleet for the length of a ``with`` block (tests, benchmarks): stopped and purged on
    exit, and when starting it fails halfway, so no sshd, dockerd or robot user outlives the block.

    Without ``state_root`` it lives in a fresh directory under /var/tmp, removed afterwards (robot users
    must be able to enter their homes, so it is world-searchable; pytest's own tmp root is not).
    ``attempts`` > 1 retries a start that failed on the host (a daemon slow to write its pidfile).
    ``options`` go to ``simulate``.
    """
    own_root = state_root is None
    root = Path(tempfile.mkdtemp(prefix=f"edge-fleet-{name}-", dir="/var/tmp")) if own_root else state_root
    assert root is not None
    os.chmod(root, 0o755)
    try:
        for attempt in range(1, attempts + 1):
            try:
                sim = simulate(robots, name, state_root=root, **options)
                break
            except BaseException as exc:
                with contextlib.suppress(Exception):  # stop what did start
                    stop(Simulation.load(name, root), purge=True)
                if attempt == attempts or not isinstance(exc, (OSError, FleetError)):
                    raise
        try:
            yield sim
        finally:
            stop(sim, purge=True)
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)


def list_simulations(state_root: Path = DEFAULT_STATE_ROOT) -> list[dict[str, Any]]:
    out = []
    for path in sorted(state_root.glob("*/simulation.json")):
        with contextlib.suppress(FleetError, OSError, json.JSONDecodeError, TypeError):
            sim = Simulation.load(path.parent.name, state_root)
            for r in sim.robots:
                rdir = Path(sim.state_dir) / "robots" / r.name
                out.append(
                    {
                        "fleet": sim.name,
                        "robot": r.name,
                        "ssh": f"{r.user}@127.0.0.1:{r.ssh_port}",
                        "service_port": r.service_port,
                        "sshd": alive(r.sshd_pid, str(rdir / "sshd_config")),
                        "dockerd": alive(r.dockerd_pid, str(rdir / "daemon.json")),
                        "fleet_file": str(sim.fleet_file),
                    }
                )
    return out
