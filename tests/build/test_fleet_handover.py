"""The hand-over update strategy as the robot makes it (compose/edge-update.sh, run for real by ``sh`` in a
temporary home with a stand-in ``docker``, tests/build/local_robot.py): the new release starts as the other
compose project, is gated on its own port, is told to take over (SIGUSR1), and only then does ``current``
move and the old project stop; a failed gate stops the new project and never touches the old one. The
memory check and the fallbacks to stop-start say why in the result. The sockets themselves are
tests/runtime/test_handover.py; a real robot is tests/e2e/test_handover.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench._serve import free_port

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.inventory import Robot, parse_fleet
from edge_deploy.fleet.options import DeployRequest, RolloutOptions
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.ssh import CommandResult, RobotUnreachable
from edge_deploy.fleet.switch import handover_memory_problem, parse_mem_usage
from tests.build.local_robot import (
    GateService,
    LocalRobot,
    no_waits,
    robot_history,
    robot_on,
    robot_state,
    wait_for_state,
)

NEW = "reg.example/team/runtime@sha256:" + "b" * 64
RUNS_EDGE = {"--format": [0, "edge\n", ""], "": [0, "c0ffee\n", ""]}  # project "edge" runs the service


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    no_waits(monkeypatch, poll_s=0.2)


@pytest.fixture(scope="module")
def gate() -> Iterator[GateService]:
    with GateService().serving() as g:
        yield g


def on_robot(tmp_path: Path, gate: GateService, ps: dict[str, Any] | None = None) -> LocalRobot:
    lr = robot_on(tmp_path, gate.port, ps=ps or RUNS_EDGE)
    # a gate port nothing listens on: edge-update.sh reads it closed as "the new release took over"
    lr.robot = dataclasses.replace(lr.robot, handover_port=free_port())
    return lr


def deploy(lr: LocalRobot, **kw: Any) -> RobotResult:
    return asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW, **kw), {}))


def docker_lines(lr: LocalRobot) -> list[str]:
    return [" ".join(c) for c in lr.calls("docker")]


def index(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


def test_hand_over_gates_the_new_project_then_it_takes_over_and_the_old_stops(
    tmp_path: Path, gate: GateService
) -> None:
    lr = on_robot(tmp_path, gate)
    res = deploy(lr)
    assert res.outcome == "updated", res.reason
    assert res.update == {"strategy": "hand-over"}
    lines = docker_lines(lr)
    up = index(lines, "compose -p edge-b up -d --wait")
    kill = index(lines, "kill -s USR1 c0ffee")
    old_down = index(lines, "compose -p edge down")
    assert up < kill < old_down  # the old project stops only after the new one took the address
    # a small CPU weight while it loads and is gated beside the serving release, full weight at takeover
    assert index(lines, "compose -p edge-b create") < index(lines, "update --cpu-shares 128 c0ffee") < up
    assert kill < index(lines, "update --cpu-shares 1024 c0ffee") < old_down
    assert not any("compose -p edge up" in line for line in lines)  # the old one is never restarted
    assert os.readlink(lr.file("edge/current")) == "releases/0.2.0"
    assert "COMPOSE_PROJECT_NAME=edge-b" in lr.file("edge/releases/0.2.0/.env").read_text().splitlines()
    st = robot_state(lr)
    assert (st["current"], st["previous"]) == ("0.2.0", "0.1.0")
    # the gate reached the new release on its own port, and asked Docker about the new project's container
    assert any("compose.project=edge-b" in c and "State.Status" in c for c in lr.commands)


def test_a_failed_gate_under_hand_over_stops_only_the_new_project(tmp_path: Path, gate: GateService) -> None:
    lr = on_robot(tmp_path, gate)
    gate.infer = (500, {"error": "the engine fell over"})
    try:
        res = deploy(lr)
    finally:
        gate.reset()
    assert res.outcome == "rolled_back" and "smoke inference answered 500" in res.reason, res.reason
    lines = docker_lines(lr)
    assert any("compose -p edge-b down" in line for line in lines)
    assert not any("kill -s USR1" in line or "compose -p edge down" in line for line in lines)
    assert os.readlink(lr.file("edge/current")) == "releases/0.1.0"  # never moved
    st = robot_state(lr)
    assert (st["current"], st["last_result"], st["restore_s"]) == ("0.1.0", "rolled_back", 0)
    assert "0.1.0 kept serving" in st["reason"]
    assert lr.file("edge/bad-versions").read_text().split() == ["0.2.0"]
    last = robot_history(lr)[-1]
    assert (last["action"], last["by"], last["to"]) == ("auto-rollback", "robot", "0.1.0")


def test_stop_start_by_the_operator_replaces_the_container_in_its_project(
    tmp_path: Path, gate: GateService
) -> None:
    lr = on_robot(tmp_path, gate)
    res = deploy(lr, update_strategy="stop-start")
    assert res.outcome == "updated" and res.update == {"strategy": "stop-start"}, res.reason
    lines = docker_lines(lr)
    assert any("compose -p edge up -d --wait" in line for line in lines)
    assert not any("edge-b up" in line or "kill -s USR1" in line for line in lines)
    assert "COMPOSE_PROJECT_NAME=edge" in lr.file("edge/releases/0.2.0/.env").read_text().splitlines()


def test_too_little_memory_for_two_releases_falls_back_to_stop_start_with_the_reason(
    tmp_path: Path, gate: GateService
) -> None:
    lr = on_robot(tmp_path, gate)
    # 200 MB available; the running release's container uses 120 MiB
    lr.canned["MemAvailable"] = CommandResult(0, "204800\n120MiB / 3.6GiB\n", "")
    res = deploy(lr)
    assert res.outcome == "updated", res.reason
    assert res.update["strategy"] == "stop-start"
    assert res.update["fallback"] == (
        "only 200 MB available, below the running release's 120 MB plus 256 MB for a second release beside it"
    )
    assert not any("edge-b up" in line for line in docker_lines(lr))


def test_nothing_running_to_hand_over_from_is_a_stop_start_that_says_so(
    tmp_path: Path, gate: GateService
) -> None:
    lr = on_robot(tmp_path, gate, ps={"--format": [0, "", ""], "": [0, "c0ffee\n", ""]})
    res = deploy(lr)
    assert res.outcome == "updated", res.reason
    assert res.update == {"strategy": "stop-start", "fallback": "no release runs to hand over from"}


# The stand-in answers for a ROS 2 rollout: the gate's DDS probe inside the container, and whether a
# runtime's bridge hands over (edge-update.sh's BRIDGE_CHECK reads its marker; 3: an older runtime).
PROBE = {"edge_runtime.ros2.probe": [0, '{"ok": true, "round_trip_ms": 1.0}\n', ""]}
BRIDGE_OLD = [3, "", ""]


def ros2_robot(tmp_path: Path, gate: GateService, running_ros2: bool = True, **answers: Any) -> LocalRobot:
    lr = on_robot(tmp_path, gate)
    lr.config["exec"] = {**PROBE, **answers.get("exec", {})}
    lr.config["run"] = answers.get("run", {})
    lr.save_config()
    if running_ros2:  # the running release was rolled out with ROS 2 on
        env = lr.file("edge/releases/0.1.0/.env")
        env.write_text(env.read_text() + "EDGE_ROS2=1\n")
    return lr


def test_a_ros2_robot_hands_over_when_both_runtimes_hand_the_bridge_over(
    tmp_path: Path, gate: GateService
) -> None:
    lr = ros2_robot(tmp_path, gate)
    res = deploy(lr, include_ros2=True)
    assert res.outcome == "updated", res.reason
    assert res.update == {"strategy": "hand-over"}
    lines = docker_lines(lr)
    # both runtimes asked first: the new image (not started: no network) and the running container
    check_new = index(
        lines, "run --rm --pull never --platform linux/arm64 --network none --entrypoint python3 " + NEW
    )
    check_old = index(lines, "exec c0ffee python3 -c import importlib.util")
    assert "BRIDGE_HANDOVER = " in lines[check_new] and "BRIDGE_HANDOVER = " in lines[check_old]
    assert check_new < check_old < index(lines, "compose -p edge-b up -d --wait")
    assert index(lines, "kill -s USR1 c0ffee") < index(lines, "compose -p edge down")
    assert "EDGE_ROS2=1" in lr.file("edge/releases/0.2.0/.env").read_text().splitlines()
    # the gate's DDS probe ran in the new release's container and only its standby bridge may answer
    assert any("compose.project=edge-b" in c and "ros2.probe" in c and "--standby" in c for c in lr.commands)


def test_a_new_runtime_older_than_bridge_hand_over_is_a_stop_start_that_says_so(
    tmp_path: Path, gate: GateService
) -> None:
    lr = ros2_robot(tmp_path, gate, run={"find_spec": BRIDGE_OLD})
    res = deploy(lr, include_ros2=True)
    assert res.outcome == "updated", res.reason
    assert res.update == {
        "strategy": "stop-start",
        "fallback": "the ROS 2 bridge of 0.2.0's edge-runtime cannot hand over (older than bridge hand-over: "
        "two bridges would answer one observation)",
    }
    lines = docker_lines(lr)
    assert not any("edge-b up" in line or "kill -s USR1" in line for line in lines)
    assert any("compose -p edge up -d --wait" in line for line in lines)


def test_a_running_runtime_older_than_bridge_hand_over_is_a_stop_start_that_says_so(
    tmp_path: Path, gate: GateService
) -> None:
    lr = ros2_robot(tmp_path, gate, exec={"find_spec": BRIDGE_OLD})
    res = deploy(lr, include_ros2=True)
    assert res.outcome == "updated", res.reason
    assert res.update["strategy"] == "stop-start"
    assert res.update["fallback"].startswith("the running release's ROS 2 bridge cannot hand over")
    assert not any("edge-b up" in line for line in docker_lines(lr))


def test_a_running_release_without_ros2_needs_no_bridge_check(tmp_path: Path, gate: GateService) -> None:
    """Its runtime publishes no action, so its age does not matter; only the new release's is asked."""
    lr = ros2_robot(tmp_path, gate, running_ros2=False, exec={"find_spec": BRIDGE_OLD})
    res = deploy(lr, include_ros2=True)
    assert res.outcome == "updated" and res.update == {"strategy": "hand-over"}, (res.reason, res.update)
    assert not any("exec c0ffee python3 -c" in line for line in docker_lines(lr))


def test_memory_usage_and_the_check() -> None:
    assert parse_mem_usage("123.5MiB / 7.6GiB") == 123.5
    assert parse_mem_usage("1.5GiB / 7.6GiB") == 1536.0
    assert parse_mem_usage("512KiB / 1GiB") == 0.5
    assert parse_mem_usage("--") is None
    assert handover_memory_problem(4 * 1024 * 1024, 800.0) is None
    assert (
        handover_memory_problem(None, 800.0)
        == "the robot's available memory could not be read (/proc/meminfo)"
    )
    assert "only 900 MB available" in str(handover_memory_problem(900 * 1024, 800.0))


def test_inventory_update_strategy_and_handover_port(tmp_path: Path) -> None:
    fleet = parse_fleet(
        {
            "defaults": {"update_strategy": "stop-start"},
            "robots": [
                {"name": "a", "host": "10.0.0.1"},
                {"name": "b", "host": "10.0.0.2", "update_strategy": "hand-over", "handover_port": 9100},
                {"name": "c", "host": "10.0.0.3", "service_port": 65000},
            ],
        },
        tmp_path,
    )
    a, b, c = fleet.robots
    assert (a.update_strategy, b.update_strategy) == ("stop-start", "hand-over")
    assert (a.gate_port, b.gate_port, c.gate_port) == (9080, 9100, 64000)
    assert Robot("d", "10.0.0.4").update_strategy == "hand-over"  # the default
    with pytest.raises(
        FleetError, match="'update_strategy': expected hand-over or stop-start, got 'blue-green'"
    ):
        parse_fleet({"robots": [{"name": "a", "host": "h", "update_strategy": "blue-green"}]}, tmp_path)
    with pytest.raises(FleetError, match="expected a port other than service_port 8080"):
        Robot("e", "h", handover_port=8080)
    with pytest.raises(FleetError, match="must be hand-over or stop-start, not 'fast'"):
        RolloutOptions(version="1.0.0", update_strategy="fast")


def test_a_hand_over_whose_script_died_keeps_the_running_release_and_removes_the_new_project(
    tmp_path: Path, gate: GateService
) -> None:
    """The script dies while the new release waits for its gate (a reboot, a kill): ``recover`` puts the
    previous release back where it still runs (its own project, not restarted elsewhere) and removes the
    new project, so one project remains."""
    lr = on_robot(tmp_path, gate)
    lr.transport_faults["docker ps -aq"] = RobotUnreachable("Robot arm-1: the SSH connection broke (reset).")
    with pytest.raises(RobotUnreachable):
        deploy(lr, confirm_timeout_s=120)
    st = wait_for_state(lr, {"awaiting_confirm"})
    assert (st["strategy"], st["gate_project"]) == ("hand-over", "edge-b")
    os.kill(st["pid"], signal.SIGKILL)
    lr.transport_faults.clear()
    calls_before = len(docker_lines(lr))
    after = asyncio.run(RobotReleases(lr).settle_pending())
    assert (after["current"], after["last_result"]) == ("0.1.0", "reverted"), after
    assert os.readlink(lr.file("edge/current")) == "releases/0.1.0"
    recovered = docker_lines(lr)[calls_before:]
    assert any("compose -p edge up -d --wait" in line for line in recovered), recovered
    assert any("compose -p edge-b down" in line for line in recovered), recovered
    assert "COMPOSE_PROJECT_NAME=edge-b" not in lr.file("edge/releases/0.1.0/.env").read_text()
