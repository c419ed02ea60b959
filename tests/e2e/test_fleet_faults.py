"""Faults with the real fault on simulated robots (own dockerd + sshd each, arm64 under QEMU): the robot's
sshd and its sessions killed by PID just after the switch (the most dangerous step), with a release that
works and one that crashes; a release pinned by hand in current/.env; a Docker data root on a small
filesystem made full. Tests run in file order on one robot; timings are printed at the end (``-s``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_fleet_docker import PLATFORM, REGISTRY, build, release, runtime_ref, sh  # noqa: F401
from tests.support import need

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HEALTH_TIMEOUT = 600.0
CONFIRM_TIMEOUT = 30.0  # the robot reverts an unconfirmed switch after this long (short for the test)
NUMBERS: dict[str, Any] = {}


@dataclass
class Env:
    fleet: Path
    releases: Path
    sim: Any
    refs: dict[str, str]

    @property
    def robot(self) -> Any:
        return self.sim.robots[0]

    @property
    def home(self) -> Path:
        return Path(self.robot.home) / "edge"

    def state(self) -> dict[str, Any]:
        p = self.home / "state.json"
        return dict(json.loads(p.read_text())) if p.is_file() else {}


@pytest.fixture(scope="module")
def env(runtime_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:  # noqa: F811
    from edge_deploy.simulation import simulate as sim

    need(sim.host_bin() is not None, "dockerd from scripts/host-setup (EDGE_HOST_BIN)")
    work = tmp_path_factory.mktemp("fleet-faults")
    base = f"FROM {runtime_ref}\n"
    t0 = time.monotonic()
    refs = {  # small images on the runtime's layers: no download beyond the first, engine cache hits
        "1.0.0": build("faults-a", base + 'LABEL edge.test="faults a"\n'),
        "1.1.0": build("faults-b", base + 'LABEL edge.test="faults b"\n'),
        "1.2.0": build(
            "faults-crash",
            base + 'ENTRYPOINT ["python3", "-c", '
            "\"import sys; sys.exit('model bundle unreadable: /opt/edge/bundle') or 3\"]\n",
        ),
    }
    NUMBERS["build_images_s"] = round(time.monotonic() - t0, 1)
    releases = work / "releases"
    for version, ref in refs.items():
        release(releases, version, ref)
    try:
        with sim.simulated(
            1, "faults", ssh_port_base=2461, service_port_base=18281, registry=REGISTRY, platform=PLATFORM
        ) as s:
            yield Env(s.fleet_file, releases, s, refs)
    finally:
        if NUMBERS:
            print("\nfault numbers:", json.dumps(NUMBERS, indent=2))


def rollout_cmd(env: Env, version: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge_deploy",
        "rollout",
        version,
        "--fleet",
        str(env.fleet),
        "--releases-dir",
        str(env.releases),
        "--health-timeout",
        str(HEALTH_TIMEOUT),
        "--confirm-timeout",
        str(CONFIRM_TIMEOUT),
        "--insecure-skip-signature-check",
        "--json",
        *extra,
    ]


def deploy(env: Env, version: str, *extra: str) -> dict[str, Any]:
    p = subprocess.run(rollout_cmd(env, version, *extra), capture_output=True, text=True, timeout=1200)
    return dict(json.loads(p.stdout))


def status(env: Env) -> dict[str, Any]:
    from edge_deploy.rollout import fleet_status

    return fleet_status(env.fleet)[0]


def wait_state(env: Env, ok: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = env.state()
        if ok(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"{what}: the robot's state is {env.state()}")


def running_release(env: Env) -> str:
    """EDGE_RELEASE of the robot's running container, asked of its own engine."""
    out = sh(
        "docker",
        "-H",
        f"unix://{env.robot.socket}",
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.project=edge",
    ).stdout.split()
    assert out, "no container runs on the robot"
    envs = sh(
        "docker",
        "-H",
        f"unix://{env.robot.socket}",
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        out[0],
    ).stdout
    return next(line.split("=", 1)[1] for line in envs.splitlines() if line.startswith("EDGE_RELEASE="))


def kill_after_switch(env: Env, version: str, *extra: str) -> tuple[subprocess.Popen[str], list[int], float]:
    """Start a rollout of ``version`` and kill the robot's sshd and sessions by PID the moment its
    state says it switched; returns the rollout process, the PIDs killed and when."""
    from edge_deploy.simulation import simulate as sim

    proc = subprocess.Popen(
        rollout_cmd(env, version, *extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_state(
            env,
            lambda st: st.get("current") == version and st.get("step") == "up",
            600,
            f"the switch to {version} never came",
        )
    except BaseException:
        proc.kill()
        raise
    killed = sim.kill_sshd(env.sim, env.robot)
    assert killed, "the robot's sshd was not running"
    return proc, killed, time.monotonic()


def test_first_release(env: Env) -> None:
    t0 = time.monotonic()
    out = deploy(env, "1.0.0")
    NUMBERS["first_rollout_s"] = round(time.monotonic() - t0, 1)
    assert out["robots"][0]["outcome"] == "updated", out
    assert running_release(env) == "1.0.0"


def test_connection_lost_just_after_the_switch_reverts_then_rerun_updates(env: Env) -> None:
    """The operator's connection dies right after the switch: nobody confirms the new release, so the robot
    itself puts 1.0.0 back when the confirmation window ends; the re-run then lands 1.1.0, verified."""
    from edge_deploy.simulation import simulate as sim

    proc, killed, t_kill = kill_after_switch(env, "1.1.0")
    NUMBERS["pids_killed"] = len(killed)
    try:
        out, _ = proc.communicate(timeout=300)  # the tool loses the robot
        assert json.loads(out)["robots"][0]["outcome"] in ("unreachable", "failed"), out
        st = wait_state(
            env,
            lambda st: st.get("last_result") in ("reverted", "rolled_back", "failed", "updated"),
            HEALTH_TIMEOUT + CONFIRM_TIMEOUT + 120,
            "no outcome on the robot",
        )
        NUMBERS["kill_to_reverted_s"] = round(time.monotonic() - t_kill, 1)
        assert (st["current"], st["last_result"]) == ("1.0.0", "reverted"), st
        assert running_release(env) == "1.0.0" and os.readlink(env.home / "current") == "releases/1.0.0"
    finally:
        sim.start_sshd(env.sim, env.robot)
    t0 = time.monotonic()
    again = deploy(env, "1.1.0")
    NUMBERS["rerun_after_revert_s"] = round(time.monotonic() - t0, 1)
    assert again["robots"][0]["outcome"] == "updated", again
    assert running_release(env) == "1.1.0" and env.state()["last_result"] == "updated"
    st = status(env)
    assert (st["version"], st["health"], st["drift"]) == ("1.1.0", "healthy", None), st


def test_a_crashing_release_with_the_connection_lost_is_restored_by_the_robot(env: Env) -> None:
    """The same fault with a release whose process exits at start: the robot restores 1.1.0 on its own,
    marks 1.2.0 bad, and its reason is the container's exit code and its own last words."""
    from edge_deploy.simulation import simulate as sim

    proc, _, t_kill = kill_after_switch(env, "1.2.0", "--health-timeout", "60", "--no-prebuild")
    try:
        proc.communicate(timeout=300)
        st = wait_state(
            env,
            lambda st: st.get("last_result") in ("rolled_back", "reverted", "failed"),
            400,
            "no outcome on the robot",
        )
        NUMBERS["kill_to_restored_crash_s"] = round(time.monotonic() - t_kill, 1)
    finally:
        sim.start_sshd(env.sim, env.robot)
    assert (st["current"], st["last_result"], st.get("bad")) == ("1.1.0", "rolled_back", "1.2.0"), st
    assert "model bundle unreadable" in st["reason"] and "exit code" in st["reason"], st["reason"]
    assert "Waiting" not in st["reason"]
    assert running_release(env) == "1.1.0"
    assert "1.2.0" in (env.home / "bad-versions").read_text().split()
    NUMBERS["crash_reason"] = st["reason"][:300]


def test_a_release_pinned_by_hand_is_visible_and_the_next_rollout_starts_from_it(env: Env) -> None:
    """The documented manual rollback: EDGE_IMAGE=<repo>:faults-a (1.0.0's tag) in current/.env and
    `docker compose up -d`. Status names 1.0.0, pinned by hand; the next rollout records it."""
    tag = env.refs["1.0.0"].split("@")[0] + ":faults-a"
    envf = env.home / "current" / ".env"
    envf.write_text(
        "".join(
            f"EDGE_IMAGE={tag}\n" if ln.startswith("EDGE_IMAGE=") else ln + "\n"
            for ln in envf.read_text().splitlines()
        )
    )
    sh(
        "docker",
        "compose",
        "-p",
        "edge",
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "300",
        cwd=str(env.home / "current"),
        env={**os.environ, "DOCKER_HOST": f"unix://{env.robot.socket}"},
        timeout=400,
    )
    st = status(env)
    assert (st["version"], st["recorded"], st["last_result"]) == ("1.0.0", "1.1.0", "pinned by hand"), st
    assert st["drift"]["image"] == tag
    out = deploy(env, "1.1.0")
    assert out["robots"][0]["outcome"] == "updated" and out["robots"][0]["previous"] == "1.0.0", out
    hist = [json.loads(line) for line in (env.home / "history.jsonl").read_text().splitlines()]
    manual = [h for h in hist if h.get("action") == "manual-change"]
    assert manual and (manual[-1]["version"], manual[-1]["from"]) == ("1.0.0", "1.1.0"), manual
    assert running_release(env) == "1.1.0" and status(env)["drift"] is None


def test_full_docker_data_root_refuses_before_switching(env: Env) -> None:
    """The robot's Docker data root on a small filesystem of its own (a loop device made here), filled up:
    the update is refused before the switch, and the robot still serves its release."""
    from edge_deploy.simulation import simulate as sim

    need(os.geteuid() == 0, "root (loop device and mount)")
    robot = env.robot
    img = Path(env.sim.state_dir) / "small-root.img"
    mnt = Path(robot.data_root)
    sim.stop_dockerd(env.sim, robot)
    sh("truncate", "-s", "1536M", str(img))
    sh("mkfs.ext4", "-q", "-F", str(img))
    moved = mnt.with_name(mnt.name + ".big")
    mnt.rename(moved)
    mnt.mkdir()
    sh("mount", "-o", "loop", str(img), str(mnt))
    try:
        sim.start_dockerd(env.sim, robot)
        t0 = time.monotonic()
        first = deploy(env, "1.0.0", "--force")
        NUMBERS["rollout_onto_small_root_s"] = round(time.monotonic() - t0, 1)
        assert first["robots"][0]["outcome"] == "updated", first
        free_mb = int(sh("df", "-Pk", str(mnt)).stdout.splitlines()[1].split()[3]) // 1024
        sh("fallocate", "-l", f"{max(free_mb - 100, 1)}M", str(mnt / "filler"))
        out = deploy(env, "1.1.0")
        r = out["robots"][0]
        assert (r["outcome"], r["stage"]) == ("refused", "disk"), r
        assert str(mnt) in r["reason"] and "Docker's data root" in r["reason"], r["reason"]
        assert os.readlink(env.home / "current") == "releases/1.0.0" and running_release(env) == "1.0.0"
        assert status(env)["health"] == "healthy"
        NUMBERS["full_disk_reason"] = r["reason"]
    finally:
        sim.stop_dockerd(env.sim, robot)
        with contextlib.suppress(AssertionError):
            sh("umount", "-l", str(mnt))
        mnt.rmdir()
        moved.rename(mnt)
        img.unlink(missing_ok=True)
        sim.start_dockerd(env.sim, robot)
