"""The SSH side of a rollout against real sshd robots (from the simulator, without Docker engines): host
keys are enforced, and every refusal (disk, update lock, bad version, pull failure) leaves the robot's
current release untouched. Every test starts from robots with nothing deployed (``fresh``), so any one
runs alone."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_deploy.fleet.deploy import RobotReleases, deploy_one
from edge_deploy.fleet.inventory import Fleet, Robot, load_fleet
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.ssh import connected
from tests.support import need

IMAGE = "localhost:5000/edge-deploy/runtime@sha256:" + "e" * 64


@pytest.fixture(scope="module")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    need(os.geteuid() == 0, "root (the simulator creates users and starts sshd)")
    need(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").is_file(), "sshd (openssh-server)")
    from edge_deploy.simulation import simulate as sim

    with sim.simulated(2, "pyssh", engines=False, ssh_port_base=2301) as s:
        yield load_fleet(s.fleet_file)


@pytest.fixture(autouse=True)
def fresh(ssh_fleet: Fleet) -> None:
    """Each test starts from robots with nothing deployed: no compose directory, no state, no history."""

    async def wipe() -> None:
        for r in ssh_fleet.robots:
            async with connected(r) as c:
                await c.check("rm -rf edge", "removing the compose directory")

    asyncio.run(wipe())


def deploy(robot: Robot, version: str = "0.1.0", **kw: object) -> dict:
    return asyncio.run(deploy_one(robot, DeployRequest(version, IMAGE, **kw))).to_dict()  # type: ignore[arg-type]


async def remote(robot: Robot, cmd: str) -> str:
    async with connected(robot) as c:
        return (await c.run(cmd)).stdout


def test_session_reaches_the_robot_engine(ssh_fleet: Fleet) -> None:
    r = ssh_fleet.robots[0]
    out = asyncio.run(remote(r, "id -un; echo $DOCKER_HOST"))
    user, docker_host = out.split()
    assert user == r.user and docker_host.startswith("unix:///") and docker_host.endswith(".sock")


def test_changed_and_unknown_host_keys_are_refused(ssh_fleet: Fleet, tmp_path: Path) -> None:
    from dataclasses import replace

    r0, r1 = ssh_fleet.robots
    assert r0.known_hosts is not None
    # r1's key presented under r0's address: as if r0 had been replaced by another machine.
    lines = r0.known_hosts.read_text().splitlines()
    key_r1 = next(line for line in lines if line.startswith(f"[127.0.0.1]:{r1.port} ")).split(" ", 1)[1]
    changed = tmp_path / "changed"
    changed.write_text(f"[127.0.0.1]:{r0.port} {key_r1}\n")
    out = deploy(replace(r0, known_hosts=changed))
    assert out["outcome"] == "refused" and "host key" in out["reason"] and "refusing" in out["reason"]
    unknown = tmp_path / "unknown"
    unknown.write_text("")
    out = deploy(replace(r0, known_hosts=unknown))
    assert out["outcome"] == "refused" and "host key" in out["reason"]
    assert "edge" not in asyncio.run(remote(r0, "ls")).split()  # nothing was written on the robot


def test_out_of_disk_is_refused_before_anything_changes(ssh_fleet: Fleet) -> None:
    from dataclasses import replace

    r = replace(ssh_fleet.robots[0], min_free_mb=1 << 29)
    out = deploy(r)
    assert out["outcome"] == "refused" and out["stage"] == "disk" and "MB free" in out["reason"]
    listing = asyncio.run(remote(r, "ls -A edge/releases; test -e edge/current && echo has-current || true"))
    assert listing.strip() == ""
    hist = asyncio.run(remote(r, "cat edge/history.jsonl"))
    assert '"result": "refused"' in hist


def test_update_lock_held_by_the_application_skips_with_reason(ssh_fleet: Fleet) -> None:
    from dataclasses import replace

    r = replace(ssh_fleet.robots[1], lock_wait_s=1.0)

    async def scenario() -> tuple[dict, dict]:
        async with connected(r) as app:  # the robot's application, busy with a task
            holder = await app.conn.create_process("mkdir -p edge && exec flock edge/update.lock sleep 30")
            await asyncio.sleep(0.5)
            held = (await deploy_one(r, DeployRequest("0.1.0", IMAGE))).to_dict()
            holder.terminate()
            holder.close()
        await asyncio.sleep(0.5)
        # Lock free again: the update gets past the lock (and fails later at the pull: no engine here).
        free = (await deploy_one(r, DeployRequest("0.1.0", IMAGE))).to_dict()
        return held, free

    held, free = asyncio.run(scenario())
    assert held["outcome"] == "skipped" and held["stage"] == "lock" and "update.lock" in held["reason"]
    assert held["timings"]["lock"] >= 0.9
    assert free["stage"] != "lock"


def test_failed_pull_leaves_the_current_release(ssh_fleet: Fleet) -> None:
    r = ssh_fleet.robots[0]
    asyncio.run(
        remote(
            r,
            "mkdir -p edge/releases/0.0.9 && ln -sfn releases/0.0.9 edge/current && "
            'echo \'{"current": "0.0.9"}\' > edge/state.json',
        )
    )
    out = deploy(r, "0.1.0")
    assert out["outcome"] == "failed" and out["stage"] == "pull"
    assert "stays on 0.0.9" in out["reason"]
    assert out["uploaded_bytes"] > 0 and "upload" in out["timings"]
    state = asyncio.run(remote(r, "readlink edge/current; cat edge/releases/0.1.0/.env"))
    assert state.splitlines()[0] == "releases/0.0.9"
    assert f"EDGE_IMAGE={IMAGE}" in state


def test_bad_version_is_skipped_unless_forced(ssh_fleet: Fleet) -> None:
    r = ssh_fleet.robots[1]
    asyncio.run(remote(r, "mkdir -p edge && echo 0.6.6 >> edge/bad-versions"))
    out = deploy(r, "0.6.6")
    assert out["outcome"] == "skipped" and out["stage"] == "bad-version"
    forced = deploy(r, "0.6.6", force=True)
    assert forced["stage"] not in ("bad-version", "lock")


def test_rollback_without_previous_is_refused(ssh_fleet: Fleet) -> None:
    r = ssh_fleet.robots[1]

    async def go() -> dict:
        async with connected(r) as c:
            await c.run("rm -f edge/state.json")
            return (await RobotReleases(c).rollback(None, 10, smoke=False)).to_dict()

    out = asyncio.run(go())
    assert out["outcome"] == "refused" and "no previous release" in out["reason"]


def test_state_history_and_bad_versions_go_over_sftp(ssh_fleet: Fleet) -> None:
    """Against OpenSSH's own SFTP server: a whole-file write is renamed into place (no temporary file left),
    appends append, and nothing else in the directory changes."""
    r = ssh_fleet.robots[0]

    async def go() -> tuple[str, str, str, list[str]]:
        async with connected(r) as c:
            rr = RobotReleases(c)
            await rr.write_state({"current": "0.0.8"})
            await rr.write_state({"current": "0.0.9"})
            history = "edge/history.jsonl"
            before = (await c.run(f"wc -l < {history} 2>/dev/null || echo 0")).stdout.strip()
            await rr.append_history({"action": "deploy", "version": "1.0.0"})
            await rr.append_history({"action": "rollback", "version": "0.0.9"})
            await rr.mark_bad("9.9.9")
            await rr.mark_bad("9.9.9")
            out = (
                await c.run(f"cat edge/state.json; echo ---; tail -n 2 {history}; wc -l < {history}")
            ).stdout
            bad = (await c.run("cat edge/bad-versions")).stdout
            listing = (await c.run("ls -A edge")).stdout.split()
        return before, out, bad, listing

    before, out, bad, listing = asyncio.run(go())
    state, _, rest = out.partition("---")
    assert '"current": "0.0.9"' in state
    lines = rest.strip().splitlines()
    assert '"deploy"' in lines[0] and '"rollback"' in lines[1] and int(lines[2]) == int(before) + 2
    assert bad.split().count("9.9.9") == 1
    assert not [n for n in listing if n.endswith(".tmp")], listing
