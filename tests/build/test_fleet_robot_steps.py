"""One robot's update steps against a robot whose shell is a real ``sh`` (tests/build/local_robot.py):
what marks a version bad, where free space is measured, how ``docker pull`` is retried, and how files
reach the robot (SFTP, never a heredoc or a command's stdin)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import edge_deploy.fleet.store as store_mod
from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.ssh import CommandResult, RobotUnreachable
from tests.build.local_robot import LocalRobot

IMAGE = "reg.example/team/runtime@sha256:" + "c" * 64
GB = 1024 * 1024  # df -Pk counts 1 KiB blocks
BIG = {"edge": 50 * GB, "/srv/docker": 50 * GB, "*": 50 * GB}
DOCKER = {
    "info": [0, "/srv/docker\n", ""],
    "volume": [0, "/srv/docker/volumes/edge_engine-cache/_data\n", ""],
}
BUILD_FAILED = [
    2,
    "",
    "building the engine ...\nerror: Engine build failed: TensorRT found no tactic for node /fc1.\n",
]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries keep their count and order, without the seconds of backoff between them."""
    monkeypatch.setattr(store_mod, "RETRY_WAIT_S", 0.0)


def local(tmp_path: Path, **config: Any) -> LocalRobot:
    robot = Robot(name="arm-1", host="127.0.0.1", compose_dir="edge", lock_wait_s=5)
    return LocalRobot(robot, tmp_path, {"df": BIG, **DOCKER, **config})


def deploy(lr: LocalRobot, **kw: Any) -> RobotResult:
    return asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", IMAGE, **kw), {}))


def bad_versions(lr: LocalRobot) -> list[str]:
    p = lr.file("edge/bad-versions")
    return p.read_text().split() if p.exists() else []


# --- which failure before the switch marks the version bad ------------------------------------------------


def test_an_engine_build_failure_marks_the_version_bad(tmp_path: Path) -> None:
    lr = local(tmp_path, prebuild=[BUILD_FAILED])
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("failed", "engine"), res
    assert "TensorRT found no tactic" in res.reason
    assert bad_versions(lr) == ["0.2.0"]


@pytest.mark.parametrize(
    "fault",
    [
        RobotUnreachable("Robot arm-1: the SSH connection broke (Connection lost)."),
        FleetError("Robot arm-1: command timed out after 660 s: cd edge/releases/0.2.0 && docker compose."),
    ],
    ids=["ssh-dropped", "ssh-timeout"],
)
def test_a_transport_failure_during_the_prebuild_does_not_mark_the_version_bad(
    tmp_path: Path, fault: FleetError
) -> None:
    lr = local(tmp_path)
    lr.transport_faults["run --rm"] = fault
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("failed", "engine"), res
    assert bad_versions(lr) == [], "a dropped or slow SSH session says nothing about the release"


def test_docker_failing_around_the_build_does_not_mark_the_version_bad(tmp_path: Path) -> None:
    lr = local(
        tmp_path, prebuild=[[1, "", "Error response from daemon: Cannot connect to the Docker daemon"]]
    )
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("failed", "engine"), res
    assert bad_versions(lr) == []


# --- free space where pulls and builds land ---------------------------------------------------------------


def test_docker_data_root_without_space_refuses_the_update(tmp_path: Path) -> None:
    """The compose directory has room, Docker's data root (where the image is pulled) has not."""
    lr = local(tmp_path, df={"edge": 50 * GB, "/srv/docker": 300 * 1024, "/srv/docker/volumes": "denied"})
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("refused", "disk"), res
    assert "300 MB free" in res.reason and "/srv/docker" in res.reason and "data root" in res.reason
    assert lr.calls("docker") and not [c for c in lr.calls("docker") if c[0] == "pull"]  # nothing pulled


def test_engine_cache_volume_on_its_own_disk_is_checked(tmp_path: Path) -> None:
    lr = local(
        tmp_path,
        volume=[0, "/mnt/cache/edge_engine-cache/_data\n", ""],
        df={"edge": 50 * GB, "/srv/docker": 50 * GB, "/mnt/cache": 200 * 1024},
    )
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("refused", "disk"), res
    assert "200 MB free" in res.reason and "engine-cache" in res.reason


def test_an_unreadable_volume_is_measured_at_the_nearest_readable_folder(tmp_path: Path) -> None:
    """/srv/docker/volumes is root's (0710 on a real robot): the data root's free space stands for it."""
    lr = local(
        tmp_path,
        df={"edge": 50 * GB, "/srv/docker": 50 * GB, "/srv/docker/volumes": "denied"},
        prebuild=[BUILD_FAILED],
    )
    res = deploy(lr)
    assert res.stage == "engine", res  # got past the disk check


# --- docker pull retried, bounded, counted ----------------------------------------------------------------

TLS_TIMEOUT = [
    1,
    "",
    'Error response from daemon: Get "https://reg.example/v2/": net/http: TLS handshake timeout',
]
RESET = [
    1,
    "",
    "Error response from daemon: read tcp 10.0.0.11:51234->10.0.0.2:443: connection reset by peer",
]


def test_a_transient_pull_failure_is_retried_and_counted(tmp_path: Path) -> None:
    lr = local(tmp_path, pull=[TLS_TIMEOUT, RESET, [0, "", ""]], prebuild=[BUILD_FAILED])
    res = deploy(lr)
    assert res.stage == "engine", res  # the third pull worked
    assert len([c for c in lr.calls() if c[0] == "pull"]) == 3
    assert res.retries == {"pull": 2} and res.timings["retries"] == 2


def test_pull_retries_are_bounded(tmp_path: Path) -> None:
    lr = local(tmp_path, pull=[RESET])
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("failed", "pull"), res
    pulls = len([c for c in lr.calls() if c[0] == "pull"])
    assert pulls == store_mod.PULL_ATTEMPTS and f"after {pulls} attempts" in res.reason
    assert res.retries == {"pull": pulls - 1}


def test_a_refused_or_unknown_image_is_not_retried(tmp_path: Path) -> None:
    lr = local(tmp_path, pull=[[1, "", "Error response from daemon: manifest unknown"]])
    res = deploy(lr)
    assert (res.outcome, res.stage) == ("failed", "pull"), res
    assert len([c for c in lr.calls() if c[0] == "pull"]) == 1 and not res.retries


# --- files reach the robot over SFTP ----------------------------------------------------------------------


def test_state_history_and_bad_versions_are_written_over_sftp(tmp_path: Path) -> None:
    lr = local(tmp_path)
    rr = RobotReleases(lr)

    async def go() -> None:
        await rr.write_state({"current": "0.1.0"})
        await rr.append_history({"action": "deploy", "version": "0.1.0"})
        await rr.append_history({"action": "rollback", "version": "0.0.9"})
        await rr.mark_bad("0.2.0")
        await rr.mark_bad("0.2.0")

    asyncio.run(go())
    assert lr.stdin_writes == [], "no file content travels through a shell"
    assert asyncio.run(rr.read_state())["current"] == "0.1.0"
    assert [line.count('"action"') for line in lr.file("edge/history.jsonl").read_text().splitlines()] == [
        1,
        1,
    ]
    assert bad_versions(lr) == ["0.2.0"]


def test_the_systemd_unit_is_uploaded_then_installed_without_a_heredoc(tmp_path: Path) -> None:
    lr = local(tmp_path)
    lr.canned["test -d /run/systemd/system"] = CommandResult(0, "", "")
    note = asyncio.run(RobotReleases(lr).install_unit())
    assert note == ""
    assert not [c for c in lr.commands if "<<" in c], "no heredoc"
    sudo = lr.calls("sudo")
    assert [c[:4] for c in sudo[:1]] == [["-n", "install", "-m", "0644"]]
    assert sudo[0][-1] == "/etc/systemd/system/edge-deploy.service"
    unit = lr.file(sudo[0][-2].removeprefix(f"{lr.home}/"))
    assert f"WorkingDirectory={lr.home}/edge/current" in unit.read_text()
    assert "User=robot" in unit.read_text()
    assert sudo[1:] == [
        ["-n", "systemctl", "daemon-reload"],
        ["-n", "systemctl", "enable", "edge-deploy.service"],
    ]


# --- SSH connect retried, bounded, counted ----------------------------------------------------------------


class HangUp:
    """A TCP port that accepts and at once closes every connection (a robot whose sshd is restarting),
    counting the attempts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()


def test_ssh_connect_is_retried_bounded_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_deploy.fleet.ssh as ssh
    from edge_deploy.fleet.deploy import deploy_one

    monkeypatch.setattr(ssh, "RETRY_WAIT_S", 0.0, raising=False)
    server = HangUp()
    (tmp_path / "kh").write_text("")
    r = Robot(name="r0", host="127.0.0.1", port=server.port, known_hosts=tmp_path / "kh", connect_timeout_s=5)
    try:
        res = asyncio.run(deploy_one(r, DeployRequest("0.1.0", IMAGE)))
    finally:
        server.sock.close()
    assert res.outcome == "unreachable", res
    attempts = getattr(ssh, "CONNECT_ATTEMPTS", 0)
    assert attempts > 1 and server.accepted == attempts
    assert res.retries == {"connect": attempts - 1} and res.timings["retries"] == attempts - 1


def test_a_refused_host_key_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_deploy.fleet.deploy import deploy_one

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts
    r = Robot(name="r0", host="127.0.0.1", port=HangUp().port, connect_timeout_s=5)
    res = asyncio.run(deploy_one(r, DeployRequest("0.1.0", IMAGE)))
    assert res.outcome == "refused" and not res.retries and res.timings.get("retries", 0) == 0
