"""Pull mode of a simulated fleet: beside the robots' own dockerd, one site cache (``docker-registry`` in
proxy mode in front of the fleet registry), one Prometheus pushgateway, one Prometheus scraping it, and one
agent per robot (``edge-deploy agent run``, as the robot's user with ``DOCKER_HOST`` on the robot's engine).
Everything comes from Debian packages (scripts/host-setup installs them), listens on 127.0.0.1 only, and is
started and stopped by the PIDs recorded in ``simulation.json``, each recognised by a path of ours on its
command line.

Layout under the fleet's state dir: ``control/`` (pushgateway.data, prometheus.yml, tsdb/, logs),
``sites/<fleet>-site/`` (fleet/site.py's), ``robots/<robot>/agent.yaml`` and ``agent.log``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.site import Site, site_down, site_up
from edge_deploy.simulation.processes import alive, free_port, terminate
from edge_deploy.simulation.state import SimRobot, Simulation

PUSHGATEWAY = "prometheus-pushgateway"
PROMETHEUS = "prometheus"


def debian_binary(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        raise FleetError(f"{name} is not installed; run scripts/host-setup (Debian package {package}).")
    return path


def _control(sim: Simulation) -> Path:
    d = Path(sim.state_dir) / "control"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FleetError(f"{what} exited during start-up (see its log under the simulation's control/).")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FleetError(f"{what} did not answer on {url} within {timeout:.0f} s.")


def _spawn(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, **kw
        )


def start_pushgateway(control: Path, port: int) -> tuple[int, str]:
    """A pushgateway on 127.0.0.1:port, persisting to control/pushgateway.data (also its PID marker)."""
    data = control / "pushgateway.data"
    proc = _spawn(
        [
            debian_binary(PUSHGATEWAY, "prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={data}",
            "--persistence.interval=30s",
        ],
        control / "pushgateway.log",
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/-/ready", proc, "The pushgateway")
    return proc.pid, url


def write_prometheus_config(control: Path, gateway_port: int, scrape_interval_s: float) -> Path:
    """Scrape the pushgateway with honor_labels, so each robot's ``robot`` and ``job`` labels survive."""
    cfg = control / "prometheus.yml"
    interval = f"{max(1, round(scrape_interval_s))}s"
    cfg.write_text(
        "# Written by edge-deploy (simulation/pull.py).\n"
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gateway_port}']\n"
    )
    return cfg


def start_prometheus(
    control: Path, port: int, gateway_port: int, scrape_interval_s: float = 1.0
) -> tuple[int, str]:
    cfg = write_prometheus_config(control, gateway_port, scrape_interval_s)
    proc = _spawn(
        [
            debian_binary(PROMETHEUS, "prometheus"),
            f"--config.file={cfg}",
            f"--storage.tsdb.path={control / 'tsdb'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        control / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/-/ready", proc, "Prometheus")
    return proc.pid, url


def upstream_url(registry: str) -> str:
    """The fleet registry as the site cache's ``remoteurl``: plain HTTP on loopback, HTTPS elsewhere."""
    host = registry.split("/", 1)[0]
    loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
    return f"{'http' if loopback else 'https'}://{host}"


def start_control_plane(
    sim: Simulation,
    registry: str,
    *,
    scrape_interval_s: float = 1.0,
    port_base: int = 19090,
    site_upstream: str | None = None,
) -> dict[str, Any]:
    """Start the site cache, pushgateway and Prometheus of a pull-mode simulation and record them; the
    cache's upstream is the fleet registry unless ``site_upstream`` names another (e.g. a metered one)."""
    control = _control(sim)
    taken: set[int] = set()
    site_port = free_port(port_base + 100, taken)
    site = site_up(
        f"{sim.name}-site",
        site_upstream or upstream_url(registry),
        listen=f"127.0.0.1:{site_port}",
        state_root=Path(sim.state_dir) / "sites",
    )
    pull: dict[str, Any] = {
        "registry": registry,
        "site": site.name,
        "site_cache": site.address,
        "site_pid": site.pid,
    }
    sim.pull = pull
    sim.save()
    gw_port = free_port(port_base + 1, taken)
    pull["pushgateway_pid"], pull["pushgateway"] = start_pushgateway(control, gw_port)
    sim.save()
    prom_port = free_port(port_base, taken)
    pull["prometheus_pid"], pull["prometheus"] = start_prometheus(
        control, prom_port, gw_port, scrape_interval_s
    )
    sim.save()
    return pull


def site_of(sim: Simulation) -> Site:
    return Site.load(sim.pull["site"], Path(sim.state_dir) / "sites")


def write_agent_config(
    sim: Simulation,
    robot: SimRobot,
    *,
    repository: str,
    channel: str,
    public_key: Path,
    poll_interval_s: float = 5.0,
    poll_jitter_s: float = 2.0,
    platform: str = "linux/arm64",
    gpu: bool = False,
    allow_cpu_fallback: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The robot's agent.yaml (edge_deploy/agent/config.py's fields): its channel, the site cache, the
    pushgateway and its own engine."""
    import yaml

    rdir = Path(sim.state_dir) / "robots" / robot.name
    key = rdir / "fleet.pub"  # the robot's own copy, readable by its user
    shutil.copyfile(public_key, key)
    os.chmod(key, 0o644)
    config: dict[str, Any] = {
        "robot": robot.name,
        "repository": repository,
        "channel": channel,
        "public_key": str(key),
        "site_cache": sim.pull["site_cache"],
        "pushgateway": sim.pull["pushgateway"],
        "docker_host": f"unix://{robot.socket}",
        "compose_dir": "edge",
        "service_port": robot.service_port,
        "platform": platform,
        "gpu": gpu,
        "allow_cpu_fallback": allow_cpu_fallback,
        "poll_interval_s": poll_interval_s,
        "poll_jitter_s": poll_jitter_s,
        "health_start_interval_s": 5.0,
        **(extra or {}),
    }
    path = rdir / "agent.yaml"
    path.write_text(
        "# Written by edge-deploy (simulation/pull.py) for a simulated robot.\n" + yaml.safe_dump(config)
    )
    os.chmod(path, 0o644)
    return path


def agent_command(config: Path) -> list[str]:
    """``edge-deploy agent run --config FILE`` of this installation (the script beside this interpreter)."""
    script = Path(sys.executable).parent / "edge-deploy"
    exe = str(script) if script.is_file() else shutil.which("edge-deploy")
    if exe is None:
        raise FleetError("The edge-deploy command is not on PATH; install the project to start agents.")
    return [exe, "agent", "run", "--config", str(config)]


def _others_can_run_python() -> bool:
    """Whether a robot's user can run this installation's interpreter (not when it lives under a private
    home such as /root's)."""
    exe = Path(sys.executable).resolve()
    return all(os.stat(p).st_mode & 0o001 for p in exe.parents) and bool(os.stat(exe).st_mode & 0o001)


def start_agent(sim: Simulation, robot: SimRobot) -> int:
    """Start the robot's agent in its home, on its engine (a robot coming online): as the robot's user,
    or as root where the robot's user cannot run this installation's Python (its files are then root's)."""
    rdir = Path(sim.state_dir) / "robots" / robot.name
    config = rdir / "agent.yaml"
    if not config.is_file():
        raise FleetError(f"{robot.name} has no agent.yaml; write its agent config before starting its agent.")
    if alive(robot.agent_pid, str(config)):
        return robot.agent_pid or 0
    log = rdir / "agent.log"
    log.touch()
    shutil.chown(log, robot.user, robot.user)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": robot.home,
        "USER": robot.user,
        "LOGNAME": robot.user,
        "DOCKER_HOST": f"unix://{robot.socket}",
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("EDGE_HOST_BIN"):
        env["EDGE_HOST_BIN"] = os.environ["EDGE_HOST_BIN"]
    as_user: dict[str, Any] = {"user": robot.user, "group": robot.user} if _others_can_run_python() else {}
    proc = _spawn(agent_command(config), log, cwd=robot.home, env=env, **as_user)
    robot.agent_pid = proc.pid
    sim.save()
    return proc.pid


def stop_agent(sim: Simulation, robot: SimRobot) -> None:
    """Stop the robot's agent (a robot going offline); its engine and service keep running."""
    terminate(robot.agent_pid, str(Path(sim.state_dir) / "robots" / robot.name / "agent.yaml"), timeout=20)
    robot.agent_pid = None
    sim.save()


def stop_pull(sim: Simulation) -> None:
    """Stop every agent, Prometheus, the pushgateway and the site cache, by recorded PID."""
    for robot in sim.robots:
        stop_agent(sim, robot)
    if not sim.pull:
        return
    control = Path(sim.state_dir) / "control"
    terminate(sim.pull.get("prometheus_pid"), str(control / "prometheus.yml"), timeout=20)
    terminate(sim.pull.get("pushgateway_pid"), str(control / "pushgateway.data"), timeout=20)
    sim.pull["prometheus_pid"] = sim.pull["pushgateway_pid"] = None
    if sim.pull.get("site"):
        with contextlib.suppress(FleetError):
            site_down(site_of(sim))
    sim.pull["site_pid"] = None
    if Path(sim.state_dir).is_dir():
        sim.save()


def pull_status(sim: Simulation) -> dict[str, Any]:
    control = Path(sim.state_dir) / "control"
    out = {
        "site_cache": sim.pull.get("site_cache"),
        "pushgateway": sim.pull.get("pushgateway"),
        "prometheus": sim.pull.get("prometheus"),
        "prometheus_up": alive(sim.pull.get("prometheus_pid"), str(control / "prometheus.yml")),
        "pushgateway_up": alive(sim.pull.get("pushgateway_pid"), str(control / "pushgateway.data")),
        "agents": {
            r.name: alive(r.agent_pid, str(Path(sim.state_dir) / "robots" / r.name / "agent.yaml"))
            for r in sim.robots
        },
    }
    try:
        out["site_up"] = site_of(sim).running
    except FleetError:
        out["site_up"] = False
    return out


def start_agents(
    sim: Simulation,
    *,
    repository: str,
    channel: str,
    public_key: Path,
    robots: list[SimRobot] | None = None,
    **options: Any,
) -> list[int]:
    """Write each robot's agent.yaml and start its agent; ``options`` go to ``write_agent_config``."""
    if not sim.pull:
        raise FleetError(f"Simulated fleet {sim.name!r} is not in pull mode; start it with mode pull.")
    if not Path(public_key).is_file():
        raise FleetError(f"The fleet's public key {public_key} does not exist.")
    pids = []
    for robot in robots or sim.robots:
        write_agent_config(
            sim, robot, repository=repository, channel=channel, public_key=public_key, **options
        )
        pids.append(start_agent(sim, robot))
    return pids
