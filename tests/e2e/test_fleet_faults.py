"""Faults with the real fault on simulated robots (own dockerd + sshd each, arm64 under QEMU): the robot's
sshd and its sessions killed by PID just after the switch (the most dangerous step), with a release that
works and one that crashes; a release pinned by hand in current/.env; a Docker data root on a small
filesystem made full. Each test brings the robot to the release it starts from (tests/e2e/fleet_fixtures.py),
so any one of them runs alone; timings are printed at the end (``-s``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet_fixtures import CRASH_MESSAGE, HEALTH_TIMEOUT, FleetImages, SimFleet, sh, sim_fleet
from tests.support import need

# A test run alone pays for the session's images and its fleet's first rollout (QEMU) as well.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

CONFIRM_TIMEOUT = 30.0  # the robot reverts an unconfirmed switch after this long (short for the test)
BASE, NEXT, CRASH = "1.0.0", "1.1.0", "1.2.0"


def releases(f: SimFleet) -> SimFleet:
    """The file's releases: two that work (the runtime under two digests) and one that crashes at start."""
    f.release(BASE, f.images.label("a"))
    f.release(NEXT, f.images.label("b"))
    f.release(CRASH, f.images.crash())
    return f


def one_robot(
    images: FleetImages, work: Path, name: str, ssh_port: int, service_port: int
) -> contextlib.AbstractContextManager[SimFleet]:
    """A fleet of one robot whose first rollout puts 1.0.0 on it."""
    base = images.label("a")
    return sim_fleet(
        images,
        work,
        1,
        name,
        base=BASE,
        base_ref=base,
        title=name,
        ssh_port_base=ssh_port,
        service_port_base=service_port,
    )


@pytest.fixture(scope="module")
def robot(fleet_images: FleetImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    with one_robot(fleet_images, tmp_path_factory.mktemp("fleet-faults"), "faults", 2461, 18281) as f:
        yield releases(f)


def rollout_cmd(f: SimFleet, version: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge_deploy",
        "fleet",
        "rollout",
        version,
        "--fleet",
        str(f.fleet),
        "--releases-dir",
        str(f.releases),
        "--health-timeout",
        str(HEALTH_TIMEOUT),
        "--confirm-timeout",
        str(CONFIRM_TIMEOUT),
        "--insecure-skip-signature-check",
        "--json",
        *extra,
    ]


def deploy(f: SimFleet, version: str, *extra: str) -> dict[str, Any]:
    """A rollout through the command line, as an operator runs it; the robot's result."""
    p = subprocess.run(rollout_cmd(f, version, *extra), capture_output=True, text=True, timeout=1200)
    try:
        return dict(json.loads(p.stdout)["robots"][0])
    except (ValueError, KeyError, IndexError):
        raise AssertionError(
            f"rollout printed no summary (exit {p.returncode}): {p.stderr[-2000:]}"
        ) from None


def status(f: SimFleet) -> dict[str, Any]:
    return f.status()[f.names[0]]


def wait_state(
    f: SimFleet, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = f.state()
        if ok(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"{what}: the robot's state is {f.state()}")


def kill_after_switch(
    f: SimFleet, version: str, *extra: str
) -> tuple[subprocess.Popen[str], list[int], float]:
    """Start a rollout of ``version`` and kill the robot's sshd and sessions by PID the moment its
    state says it switched; returns the rollout process, the PIDs killed and when."""
    from edge_deploy.simulation import simulate as sim

    proc = subprocess.Popen(
        rollout_cmd(f, version, *extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_state(
            f,
            lambda st: st.get("current") == version and st.get("step") == "up",
            600,
            f"the switch to {version} never came",
        )
    except BaseException:
        proc.kill()
        raise
    killed = sim.kill_sshd(f.sim, f.robot())
    assert killed, "the robot's sshd was not running"
    return proc, killed, time.monotonic()


def test_first_release(robot: SimFleet) -> None:
    out = robot.first_rollout()
    assert out["robots"][0]["outcome"] == "updated", out
    robot.at_base()
    assert robot.running_release() == BASE


def test_connection_lost_just_after_the_switch_reverts_then_rerun_updates(robot: SimFleet) -> None:
    """The operator's connection dies right after the switch: nobody confirms the new release, so the robot
    itself puts 1.0.0 back when the confirmation window ends; the re-run then lands 1.1.0, verified."""
    from edge_deploy.simulation import simulate as sim

    robot.at_base()
    proc, killed, t_kill = kill_after_switch(robot, NEXT)
    robot.numbers["pids_killed"] = len(killed)
    try:
        out, _ = proc.communicate(timeout=300)  # the tool loses the robot
        assert json.loads(out)["robots"][0]["outcome"] in ("unreachable", "failed"), out
        st = wait_state(
            robot,
            lambda st: st.get("last_result") in ("reverted", "rolled_back", "failed", "updated"),
            HEALTH_TIMEOUT + CONFIRM_TIMEOUT + 120,
            "no outcome on the robot",
        )
        robot.numbers["kill_to_reverted_s"] = round(time.monotonic() - t_kill, 1)
        assert (st["current"], st["last_result"]) == (BASE, "reverted"), st
        assert robot.running_release() == BASE
        assert os.readlink(robot.home() / "current") == f"releases/{BASE}"
    finally:
        sim.start_sshd(robot.sim, robot.robot())
    t0 = time.monotonic()
    again = deploy(robot, NEXT)
    robot.numbers["rerun_after_revert_s"] = round(time.monotonic() - t0, 1)
    assert again["outcome"] == "updated", again
    assert robot.running_release() == NEXT and robot.state()["last_result"] == "updated"
    st = status(robot)
    assert (st["version"], st["health"], st["drift"]) == (NEXT, "healthy", None), st


def test_a_crashing_release_with_the_connection_lost_is_restored_by_the_robot(robot: SimFleet) -> None:
    """The same fault with a release whose process exits at start: the robot restores the release it ran
    on its own, marks 1.2.0 bad, and its reason is the container's exit code and its own last words."""
    from edge_deploy.simulation import simulate as sim

    was = robot.serving()[robot.names[0]]
    proc, _, t_kill = kill_after_switch(robot, CRASH, "--health-timeout", "60", "--no-prebuild")
    try:
        proc.communicate(timeout=300)
        st = wait_state(
            robot,
            lambda st: st.get("last_result") in ("rolled_back", "reverted", "failed"),
            400,
            "no outcome on the robot",
        )
        robot.numbers["kill_to_restored_crash_s"] = round(time.monotonic() - t_kill, 1)
    finally:
        sim.start_sshd(robot.sim, robot.robot())
    assert (st["current"], st["last_result"], st.get("bad")) == (was, "rolled_back", CRASH), st
    # The process's own last words name the failure; whether the robot's last look found the container
    # exited (its exit code) or between restarts (running, never healthy) depends on timing.
    assert CRASH_MESSAGE in st["reason"], st["reason"]
    assert "exit code" in st["reason"] or "never turned healthy" in st["reason"], st["reason"]
    assert "Waiting" not in st["reason"]
    assert robot.running_release() == was
    assert CRASH in (robot.home() / "bad-versions").read_text().split()
    robot.numbers["crash_reason"] = st["reason"][:300]


def test_a_release_pinned_by_hand_is_visible_and_the_next_rollout_starts_from_it(robot: SimFleet) -> None:
    """The documented manual rollback: EDGE_IMAGE=<1.0.0's image by tag> in current/.env and
    `docker compose up -d`. Status names 1.0.0, pinned by hand; the next rollout records it."""
    robot.serving()
    if status(robot)["version"] != NEXT:
        assert deploy(robot, NEXT)["outcome"] == "updated"
    tag = robot.images.tag(robot.images.label("a"))  # 1.0.0's image, by tag
    envf = robot.home() / "current" / ".env"
    envf.write_text(
        "".join(
            f"EDGE_IMAGE={tag}\n" if ln.startswith("EDGE_IMAGE=") else ln + "\n"
            for ln in envf.read_text().splitlines()
        )
    )
    # No -p: the project is current/.env's (edge, or edge-b after a hand-over), as the systemd unit does.
    sh(
        "docker",
        "compose",
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "300",
        cwd=str(robot.home() / "current"),
        env={**os.environ, "DOCKER_HOST": f"unix://{robot.robot().socket}"},
        timeout=400,
    )
    st = status(robot)
    assert (st["version"], st["recorded"], st["last_result"]) == (BASE, NEXT, "pinned by hand"), st
    assert st["drift"]["image"] == tag
    out = deploy(robot, NEXT)
    assert out["outcome"] == "updated" and out["previous"] == BASE, out
    hist = [json.loads(line) for line in (robot.home() / "history.jsonl").read_text().splitlines()]
    manual = [h for h in hist if h.get("action") == "manual-change"]
    assert manual and (manual[-1]["version"], manual[-1]["from"]) == (BASE, NEXT), manual
    assert robot.running_release() == NEXT and status(robot)["drift"] is None


@pytest.fixture
def small_root(fleet_images: FleetImages, tmp_path: Path) -> Iterator[SimFleet]:
    """A robot of its own whose Docker data root is a 1.5 GB filesystem (a loop device made here),
    mounted before its engine ever ran a release."""
    from edge_deploy.simulation import simulate as sim

    need(os.geteuid() == 0, "root (loop device and mount)")
    with one_robot(fleet_images, tmp_path, "faults-disk", 2471, 18291) as f:
        r = f.robot()
        img, mnt = tmp_path / "small-root.img", Path(r.data_root)
        sim.stop_dockerd(f.sim, r)
        sh("truncate", "-s", "1536M", str(img))
        sh("mkfs.ext4", "-q", "-F", str(img))
        sh("mount", "-o", "loop", str(img), str(mnt))
        try:
            sim.start_dockerd(f.sim, r)
            yield releases(f)
        finally:
            sim.stop_dockerd(f.sim, r)
            with contextlib.suppress(AssertionError):
                sh("umount", "-l", str(mnt))
            img.unlink(missing_ok=True)


def test_full_docker_data_root_refuses_before_switching(small_root: SimFleet) -> None:
    """The robot's Docker data root, a small filesystem of its own, filled up: the update is refused
    before the switch, and the robot still serves its release."""
    f = small_root
    t0 = time.monotonic()
    first = deploy(f, BASE)
    f.numbers["rollout_onto_small_root_s"] = round(time.monotonic() - t0, 1)
    assert first["outcome"] == "updated", first
    mnt = Path(f.robot().data_root)
    free_mb = int(sh("df", "-Pk", str(mnt)).stdout.splitlines()[1].split()[3]) // 1024
    sh("fallocate", "-l", f"{max(free_mb - 100, 1)}M", str(mnt / "filler"))
    r = deploy(f, NEXT)
    assert (r["outcome"], r["stage"]) == ("refused", "disk"), r
    assert str(mnt) in r["reason"] and "Docker's data root" in r["reason"], r["reason"]
    assert os.readlink(f.home() / "current") == f"releases/{BASE}" and f.running_release() == BASE
    assert status(f)["health"] == "healthy"
    f.numbers["full_disk_reason"] = r["reason"]
