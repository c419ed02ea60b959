"""Each simulated robot's SSH side: a system user, its own ``sshd`` on 127.0.0.1 with its own host key, whose
sessions get ``DOCKER_HOST`` pointing at that robot's engine; stopped gracefully or killed mid-session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from edge_deploy.fleet import FleetError
from edge_deploy.simulation.processes import alive, run, terminate, wait_port
from edge_deploy.simulation.state import SimRobot, Simulation

# A simulated robot keeps ROS 2's DDS traffic on loopback (no multicast): its sessions, and so the docker compose
# of edge-update.sh, hand this to a ROS 2 release's container (compose.ros2.yaml), as a robot's own setting would.
CYCLONEDDS_LOOPBACK = (
    "<CycloneDDS><Domain id='any'><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>20</MaxAutoParticipantIndex><Peers><Peer address='127.0.0.1'/></Peers>"
    "</Discovery></Domain></CycloneDDS>"
)


def _sshd() -> str:
    path = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)
    if path is None:
        raise FleetError("sshd is not installed; run scripts/host-setup (or apt-get install openssh-server).")
    return path


def ensure_user(user: str, home: Path) -> None:
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        run(
            ["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/bash", user],
            f"creating user {user}",
        )
    else:  # left from an earlier simulation: point it at this state directory
        run(["usermod", "--home", str(home), user], f"updating user {user}")
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, user, user)
    # sshd refuses a locked account even with a key; '*' disables the password but unlocks the account.
    run(["usermod", "-p", "*", "-aG", "docker", user], f"unlocking user {user}")


def write_sshd_config(rdir: Path, robot: SimRobot) -> Path:
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
                "AllowTcpForwarding yes",  # remote too: ssh-copy serves images through a reverse forward
                "X11Forwarding no",
                "Subsystem sftp internal-sftp",
                f'SetEnv DOCKER_HOST=unix://{robot.socket} "CYCLONEDDS_URI={CYCLONEDDS_LOOPBACK}"',
                "",
            ]
        )
    )
    return cfg


def start_sshd(sim: Simulation, robot: SimRobot) -> None:
    rdir = Path(sim.state_dir) / "robots" / robot.name
    cfg = rdir / "sshd_config"
    if alive(robot.sshd_pid, str(cfg)):
        return
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (rdir / "sshd.pid").unlink(missing_ok=True)
    log = rdir / "sshd.log"
    run([_sshd(), "-f", str(cfg), "-E", str(log)], f"starting sshd for {robot.name}")
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
    wait_port(robot.ssh_port)


def stop_sshd(sim: Simulation, robot: SimRobot) -> None:
    """Take a robot off the network (its engine keeps running), as a robot out of Wi-Fi range would be."""
    terminate(robot.sshd_pid, str(Path(sim.state_dir) / "robots" / robot.name / "sshd_config"))
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
    if not alive(robot.sshd_pid, cfg):
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
