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
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Fleet, Robot, dump_fleet

DEFAULT_STATE_ROOT = Path(os.environ.get("EDGE_FLEET_STATE", "/var/lib/edge-deploy/fleet"))
RUN_ROOT = Path("/run/edge-deploy/fleet")
DEFAULT_REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")


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


@dataclass
class Simulation:
    name: str
    state_dir: str
    robots: list[SimRobot] = field(default_factory=list)
    engines: bool = True

    @property
    def fleet_file(self) -> Path:
        return Path(self.state_dir) / "fleet.yaml"

    def robot(self, name: str) -> SimRobot:
        for r in self.robots:
            if r.name == name:
                return r
        raise FleetError(f"Simulated robot {name!r} is not part of fleet {self.name!r}.")

    def save(self) -> None:
        path = Path(self.state_dir) / "simulation.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, name: str, state_root: Path = DEFAULT_STATE_ROOT) -> Simulation:
        path = state_root / name / "simulation.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"No simulated fleet named {name!r} under {state_root}.") from None
        d["robots"] = [SimRobot(**r) for r in d["robots"]]
        return cls(**d)


def host_bin() -> Path | None:
    """Where the host set-up put dockerd/containerd/runc (``scripts/host-setup --env`` prints it)."""
    for cand in (os.environ.get("EDGE_HOST_BIN"), "/opt/edge-deploy/host/bin"):
        if cand and (Path(cand) / "dockerd").is_file():
            return Path(cand)
    which = shutil.which("dockerd")
    return Path(which).parent if which else None


def _sshd() -> str:
    path = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)
    if path is None:
        raise FleetError("sshd is not installed; run scripts/host-setup (or apt-get install openssh-server).")
    return path


def _free_port(start: int, taken: set[int]) -> int:
    for port in range(start, start + 500):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise FleetError(f"No free TCP port on 127.0.0.1 from {start} to {start + 499}.")


def _run(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise FleetError(f"{what} failed: {(p.stderr or p.stdout).strip()[-300:]}.")
    return p.stdout


def _alive(pid: int | None, marker: str) -> bool:
    """The PID is running and is still the process we started (its command line names our config)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def _terminate(pid: int | None, marker: str, timeout: float = 30) -> None:
    if not _alive(pid, marker):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, marker):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ensure_user(user: str, home: Path) -> None:
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        _run(
            ["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/bash", user],
            f"creating user {user}",
        )
    else:  # left from an earlier simulation: point it at this state directory
        _run(["usermod", "--home", str(home), user], f"updating user {user}")
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, user, user)
    # sshd refuses a locked account even with a key; '*' disables the password but unlocks the account.
    _run(["usermod", "-p", "*", "-aG", "docker", user], f"unlocking user {user}")


PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
)


def _give_compose_plugin(robot: SimRobot) -> None:
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


def _write_sshd_config(rdir: Path, robot: SimRobot) -> Path:
    cfg = rdir / "sshd_config"
    cfg.write_text(
        "\n".join(
            [
                f"Port {robot.ssh_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {rdir / 'ssh_host_ed25519_key'}",
                f"PidFile {rdir / 'sshd.pid'}",
                f"AllowUsers {robot.user}",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin no",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "AllowTcpForwarding local",
                "X11Forwarding no",
                "Subsystem sftp internal-sftp",
                f"SetEnv DOCKER_HOST=unix://{robot.socket}",
                "",
            ]
        )
    )
    return cfg


NVIDIA_RUNTIME = "nvidia"  # the name compose.jetson.yaml asks for


def _runc() -> str:
    """runc for the ``nvidia`` stand-in runtime: beside the host set-up's engine binaries, else on PATH."""
    bin_dir = host_bin()
    search = os.pathsep.join([*([str(bin_dir)] if bin_dir else []), os.environ.get("PATH", "/usr/bin:/bin")])
    return shutil.which("runc", path=search) or shutil.which("runc", path="/usr/sbin:/usr/bin") or "runc"


def _write_daemon_config(rdir: Path, robot: SimRobot, exec_root: Path, registry: str) -> Path:
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


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FleetError(f"sshd did not listen on 127.0.0.1:{port} within {timeout:.0f} s.")


def start_sshd(sim: Simulation, robot: SimRobot) -> None:
    rdir = Path(sim.state_dir) / "robots" / robot.name
    cfg = rdir / "sshd_config"
    if _alive(robot.sshd_pid, str(cfg)):
        return
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (rdir / "sshd.pid").unlink(missing_ok=True)
    log = rdir / "sshd.log"
    _run([_sshd(), "-f", str(cfg), "-E", str(log)], f"starting sshd for {robot.name}")
    # The daemon writes its pidfile once it listens; a port answering without it is someone else's.
    pidfile = rdir / "sshd.pid"
    deadline = time.monotonic() + 15
    pid: int | None = None
    while pid is None and time.monotonic() < deadline:
        try:  # the file can exist before the number is written into it
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.1)
    if pid is None:
        last = (log.read_text().strip().splitlines() or ["no log"])[-1] if log.is_file() else "no log"
        raise FleetError(f"sshd for {robot.name} did not start on 127.0.0.1:{robot.ssh_port} ({last}).")
    robot.sshd_pid = pid
    _wait_port(robot.ssh_port)


def stop_sshd(sim: Simulation, robot: SimRobot) -> None:
    """Take a robot off the network (its engine keeps running), as a robot out of Wi-Fi range would be."""
    _terminate(robot.sshd_pid, str(Path(sim.state_dir) / "robots" / robot.name / "sshd_config"))
    robot.sshd_pid = None


def _sshd_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that are sshd processes (per-connection sessions): killing them drops
    every open connection; what the sessions started loses its connection as on a real link failure."""
    children: dict[int, list[int]] = {}
    comm: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            comm[int(d.name)] = (d / "comm").read_text().strip()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c in children.get(p, []) if comm.get(c, "").startswith("sshd"))
    return out


def kill_sshd(sim: Simulation, robot: SimRobot) -> list[int]:
    """Drop a robot off the network at once, mid-session: SIGKILL its sshd and every session it serves
    (a Wi-Fi link lost during an update), not the graceful stop of ``stop_sshd``. Returns the PIDs killed;
    ``start_sshd`` brings it back."""
    cfg = str(Path(sim.state_dir) / "robots" / robot.name / "sshd_config")
    if not _alive(robot.sshd_pid, cfg):
        return []
    assert robot.sshd_pid is not None
    pids = _sshd_tree(robot.sshd_pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(robot.sshd_pid, os.WNOHANG)
    robot.sshd_pid = None
    return pids


def stop_dockerd(sim: Simulation, robot: SimRobot) -> None:
    """Stop one robot's engine (its containers stop with it), e.g. to move its data root."""
    _terminate(
        robot.dockerd_pid, str(Path(sim.state_dir) / "robots" / robot.name / "daemon.json"), timeout=60
    )
    robot.dockerd_pid = None
    sim.save()


def start_dockerd(sim: Simulation, robot: SimRobot) -> None:
    rdir = Path(sim.state_dir) / "robots" / robot.name
    cfg = rdir / "daemon.json"
    if _alive(robot.dockerd_pid, str(cfg)):
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
) -> Simulation:
    """Start (or restart) a simulated fleet and write its ``fleet.yaml``; ``engines=False`` starts only the
    SSH side (for tests of the SSH layer on machines without Docker). Robots pull ``platform`` images:
    linux/arm64 (Jetson, under QEMU here) unless an amd64 runtime variant is wanted on x86 hosts.
    ``gpu``: robots are ``gpu: true`` as Jetsons are (compose.jetson.yaml on the ``nvidia`` stand-in
    runtime); with no GPU they serve ONNX Runtime on the CPU, which fails their gate unless
    ``allow_cpu_fallback`` (or the release) allows it."""
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
        _run(
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
            ssh_port=_free_port(ssh_port_base, taken),
            service_port=_free_port(service_port_base, taken),
            home=str(rdir / "home"),
            socket=str(RUN_ROOT / name / f"{i}.sock"),
            data_root=str(rdir / "docker"),
        )
        taken.update({robot.ssh_port, robot.service_port})
        if old is None:
            sim.robots.append(robot)
        _ensure_user(robot.user, Path(robot.home))
        hostkey = rdir / "ssh_host_ed25519_key"
        if not hostkey.is_file():
            _run(
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
        _give_compose_plugin(robot)
        _write_sshd_config(rdir, robot)
        _write_daemon_config(rdir, robot, exec_root, registry)
    sim.robots = sim.robots[:robots]
    (state / "known_hosts").write_text("\n".join(known_lines) + "\n")
    sim.save()
    try:
        for robot in sim.robots:
            if engines:
                start_dockerd(sim, robot)
            start_sshd(sim, robot)
            sim.save()
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
        "# Generated by `edge-deploy fleet simulate`; robots are local dockerd + sshd.\n" + dump_fleet(fleet)
    )
    return sim


def _native(platform: str) -> bool:
    """Whether ``platform`` images run natively on this host (not under QEMU)."""
    machine = os.uname().machine
    return platform.split("/")[-1] == {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _unmount_under(prefix: Path) -> None:
    """Unmount what a stopped engine left below ``prefix`` (its netns file, overlay snapshots), deepest
    first, so the directory can be removed."""
    root = str(prefix).rstrip("/") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for mnt in sorted((m for m in mounts if m.startswith(root) or m == root[:-1]), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def stop(sim: Simulation, *, purge: bool = False) -> None:
    """Stop every recorded sshd and dockerd by PID (the engines stop their containers); ``purge`` also
    deletes the robots' users and state."""
    for robot in sim.robots:
        rdir = Path(sim.state_dir) / "robots" / robot.name
        stop_sshd(sim, robot)
        _terminate(robot.dockerd_pid, str(rdir / "daemon.json"), timeout=60)
        robot.dockerd_pid = None
    if Path(sim.state_dir).is_dir():
        sim.save()
    if purge:
        for robot in sim.robots:
            subprocess.run(["userdel", robot.user], capture_output=True)
            _unmount_under(Path(robot.data_root))
        _unmount_under(RUN_ROOT / sim.name)
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
                        "sshd": _alive(r.sshd_pid, str(rdir / "sshd_config")),
                        "dockerd": _alive(r.dockerd_pid, str(rdir / "daemon.json")),
                        "fleet_file": str(sim.fleet_file),
                    }
                )
    return out
