"""The switch owned by the robot (compose/edge-update.sh, run for real by a real ``sh`` in a temporary home,
tests/build/local_robot.py): a connection lost after the switch, a re-run, a killed script, a failed start
named by the container's own words, a release pinned by hand, and a rollback to a release no longer kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.ssh import RobotUnreachable
from tests.build.local_robot import (
    OLD,
    GateService,
    LocalRobot,
    no_waits,
    robot_history,
    robot_on,
    robot_state,
    wait_for_state,
)

NEW = "reg.example/team/runtime@sha256:" + "b" * 64
GONE = "reg.example/team/runtime@sha256:" + "9" * 64


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    no_waits(monkeypatch, poll_s=0.2)


@pytest.fixture(scope="module")
def service() -> Iterator[int]:
    """A service that answers as a ready edge-runtime does (the gate's HTTP side)."""
    with GateService().serving() as gate:
        yield gate.port


def deploy(lr: LocalRobot, **kw: Any) -> RobotResult:
    return asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW, smoke=False, **kw), {}))


def test_a_connection_lost_after_the_switch_is_reverted_by_the_robot(service: int, tmp_path: Path) -> None:
    """The SSH connection dies once the new release is up, before the gate confirmed it: without any
    operator the robot puts the previous release back when the confirmation does not come."""
    lr = robot_on(tmp_path, service)
    lr.transport_faults["docker ps -aq"] = RobotUnreachable("Robot arm-1: the SSH connection broke (reset).")
    with pytest.raises(RobotUnreachable):
        deploy(lr, confirm_timeout_s=20)  # the operator reaches its gate well within this, even loaded
    st = wait_for_state(lr, {"reverted", "rolled_back", "failed"}, timeout=60)
    assert (st["current"], st["last_result"]) == ("0.1.0", "reverted"), st
    assert os.readlink(lr.file("edge/current")) == "releases/0.1.0"
    assert "no confirmation from the operator" in st["reason"]
    last = robot_history(lr)[-1]
    assert (last["action"], last["by"], last["result"], last["version"]) == (
        "auto-rollback",
        "robot",
        "reverted",
        "0.2.0",
    )
    assert not lr.file("edge/bad-versions").exists()  # the connection failed, not the release


def test_a_re_run_confirms_a_switch_its_lost_connection_left_waiting(service: int, tmp_path: Path) -> None:
    """The re-run of the same rollout finds the robot waiting for a confirmation of that very release:
    it runs the gate, confirms, and ends with the robot on the new release, verified."""
    lr = robot_on(tmp_path, service)
    lr.transport_faults["docker ps -aq"] = RobotUnreachable("Robot arm-1: the SSH connection broke (reset).")
    with pytest.raises(RobotUnreachable):
        deploy(lr, confirm_timeout_s=120)
    assert wait_for_state(lr, {"awaiting_confirm"})["current"] == "0.2.0"
    lr.transport_faults.clear()
    res = deploy(lr, confirm_timeout_s=120)
    assert res.outcome in ("updated", "unchanged"), res.reason
    st = robot_state(lr)
    assert (st["current"], st["image"]) == ("0.2.0", NEW) and os.readlink(
        lr.file("edge/current")
    ) == "releases/0.2.0"


def test_a_switch_whose_script_was_killed_is_undone_before_the_next_update(
    service: int, tmp_path: Path
) -> None:
    """The robot-side script dies mid-transaction (a reboot): nothing will confirm or revert it, so the next
    operator contact runs ``edge-update.sh recover`` and the previous release comes back."""
    lr = robot_on(tmp_path, service)
    lr.transport_faults["docker ps -aq"] = RobotUnreachable("Robot arm-1: the SSH connection broke (reset).")
    with pytest.raises(RobotUnreachable):
        deploy(lr, confirm_timeout_s=120)
    st = wait_for_state(lr, {"awaiting_confirm"})
    os.kill(st["pid"], signal.SIGKILL)
    lr.transport_faults.clear()
    after = asyncio.run(RobotReleases(lr).settle_pending())
    assert (after["current"], after["last_result"]) == ("0.1.0", "reverted"), after
    assert "interrupted before it was confirmed" in after["reason"]
    assert os.readlink(lr.file("edge/current")) == "releases/0.1.0"


def test_a_service_that_does_not_come_up_is_named_by_its_own_exit_code_and_log(
    service: int, tmp_path: Path
) -> None:
    """The reason of an automatic rollback is the container's exit code and the last lines of its log,
    not compose's progress output."""
    compose_said = "Container edge-edge-runtime-1  Waiting\ncontainer edge-edge-runtime-1 is unhealthy"
    lr = robot_on(
        tmp_path,
        service,
        up=[[1, "", compose_said], [0, "", ""]],
        logs={
            "": [
                0,
                "loading bundle /opt/edge/bundle\nTraceback (most recent call last):\n"
                "RuntimeError: model.onnx is missing from the bundle\n",
                "",
            ],
        },
    )
    res = deploy(lr)
    assert res.outcome == "rolled_back", res
    assert "exit code 3" in res.reason and "RuntimeError: model.onnx is missing from the bundle" in res.reason
    assert "Waiting" not in res.reason and res.reason.endswith("; restored 0.1.0")
    assert lr.file("edge/bad-versions").read_text() == "0.2.0\n"


def test_a_release_pinned_by_hand_is_shown_and_the_next_rollout_starts_from_it(
    service: int, tmp_path: Path
) -> None:
    """state.json says 0.2.0, but a person pinned 0.1.0's image in current/.env and ran compose up: status
    names 0.1.0 and "pinned by hand", and the next rollout records it and does not call 0.2.0 unchanged."""
    pinned = "reg.example/team/runtime:0.1.0"
    lr = robot_on(tmp_path, service, running=pinned)
    lr.config["inspect"]["-f {{.Image}}"] = [0, OLD.split("@")[1] + "\n", ""]
    lr.config["image"]["RepoDigests"] = [0, f"{OLD} \n", ""]
    lr.save_config()
    d = lr.file("edge/releases/0.2.0")
    d.mkdir(parents=True)
    (d / ".env").write_text(f"EDGE_IMAGE={pinned}\n")  # edited by hand
    os.remove(lr.file("edge/current"))
    os.symlink("releases/0.2.0", lr.file("edge/current"))
    lr.file("edge/state.json").write_text(json.dumps({"current": "0.2.0", "previous": "0.1.0", "image": NEW}))
    known = {OLD.split("@")[1]: ("0.1.0", OLD), NEW.split("@")[1]: ("0.2.0", NEW)}
    info = asyncio.run(RobotReleases(lr).status(known))
    assert (info["version"], info["recorded"], info["last_result"]) == ("0.1.0", "0.2.0", "pinned by hand")
    assert info["drift"]["image"] == pinned
    # The next rollout of 0.2.0 starts from 0.1.0: an update, recorded.
    res = asyncio.run(
        RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW, smoke=False, known_images=known), {})
    )
    assert res.outcome == "updated" and res.previous == "0.1.0", res
    manual = [h for h in robot_history(lr) if h["action"] == "manual-change"]
    assert manual and manual[0]["version"] == "0.1.0" and manual[0]["from"] == "0.2.0", robot_history(lr)


def test_a_release_pinned_by_hand_to_an_unknown_image_is_named_so(service: int, tmp_path: Path) -> None:
    lr = robot_on(tmp_path, service, running="someone/else:latest")
    lr.config["inspect"]["-f {{.Image}}"] = [0, "sha256:" + "e" * 64 + "\n", ""]
    lr.save_config()
    info = asyncio.run(RobotReleases(lr).status({}))
    assert info["version"] == "unknown image" and info["drift"]["image"] == "someone/else:latest"
    assert info["recorded"] == "0.1.0"


def test_rollback_to_a_release_no_longer_kept_deploys_it(service: int, tmp_path: Path) -> None:
    """``rollback --to 0.0.9`` where the robot pruned 0.0.9: it is deployed from its manifest, gated."""
    lr = robot_on(tmp_path, service)
    req = DeployRequest("0.0.9", GONE, smoke=False, force=True, action="rollback")
    res = asyncio.run(RobotReleases(lr).rollback("0.0.9", 60, smoke=False, deploy=req))
    assert res.outcome == "updated", res.reason
    assert robot_state(lr)["current"] == "0.0.9" and os.readlink(lr.file("edge/current")) == "releases/0.0.9"
    assert any(h["action"] == "rollback" and h["result"] == "ok" for h in robot_history(lr))
    assert ["pull", "-q", "--platform", "linux/arm64", GONE] in lr.calls()


def test_rollback_to_a_release_no_longer_kept_without_its_manifest_says_how_to_deploy_it(
    service: int, tmp_path: Path
) -> None:
    lr = robot_on(tmp_path, service)
    hint = "; no releases/0.0.9.json in releases to deploy it from: a rollout of 0.0.9 to this robot does"
    res = asyncio.run(RobotReleases(lr).rollback("0.0.9", 60, smoke=False, not_kept_hint=hint))
    assert res.outcome == "refused" and res.reason.startswith("release 0.0.9 is not kept on this robot; no ")
    assert res.reason.endswith("a rollout of 0.0.9 to this robot does")
