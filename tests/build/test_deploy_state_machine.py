"""The deploy/rollback state machine, one row per transition and failure stage, against a robot whose shell
is a real ``sh`` (tests/build/local_robot.py): the update lock's ``flock``, the ``mv``/``ln`` of the switch and
compose/edge-update.sh run for real, only docker/df/sudo answer from a script, and the health gate talks
to a tiny HTTP server on loopback. Each row injects one fault and checks what a user relies on: the
outcome and stage, the robot's state.json, its ``current`` symlink, its history and bad-versions, and the
releases kept on its disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import RobotResult
from edge_deploy.fleet.ssh import RobotUnreachable
from tests.build.local_robot import (
    OLD,
    RUNTIME,
    GateService,
    LocalRobot,
    current_link,
    no_waits,
    robot_history,
    robot_on,
    robot_state,
    wait_for_state,
    wait_script_done,
)

NEW = RUNTIME + "b" * 64  # the image of release 0.2.0
OLDER = RUNTIME + "9" * 64  # the image of release 0.0.9, kept as previous
BUILD_FAILED = [2, "", "error: Engine build failed: TensorRT found no tactic for node /fc1.\n"]
CRASH_LOG = {"": [0, "loading bundle\nRuntimeError: model.onnx is missing from the bundle\n", ""]}
LOST = RobotUnreachable("Robot arm-1: the SSH connection broke (Connection reset by peer).")


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    no_waits(monkeypatch, poll_s=0.1)


@pytest.fixture(scope="module")
def service() -> Iterator[GateService]:
    with GateService().serving() as gate:
        yield gate


@pytest.fixture
def gate(service: GateService) -> Iterator[GateService]:
    service.reset()
    yield service
    service.reset()


Fault = Callable[[LocalRobot, GateService, contextlib.ExitStack], None]


def no_fault(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    return None


def hold_update_lock(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    """The robot's application holds update.lock (flock) for the whole test."""
    proc = subprocess.Popen(
        ["flock", str(lr.file("edge/update.lock")), "sh", "-c", "echo held; exec sleep 120"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait, 10)
    stack.callback(os.kill, proc.pid, signal.SIGKILL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"


def mark_bad(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    lr.file("edge/bad-versions").write_text("0.2.0\n")


def stub(**answers: Any) -> Fault:
    """What docker/df answer from now on (see local_robot.STUB)."""

    def fault(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
        lr.config.update(answers)
        lr.save_config()

    return fault


def transport(needle: str, exc: FleetError) -> Fault:
    """The SSH transport fails on the first command containing ``needle``."""

    def fault(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
        lr.transport_faults[needle] = exc

    return fault


def broken_upload(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    lr.upload_fault = FleetError("Robot arm-1: uploading to edge/releases failed (Connection lost).")


def not_ready(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    gate.ready = False


def smoke_error(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    gate.infer = (500, {"error": "CUDA error: an illegal memory access was encountered"})


def smoke_wrong_shape(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    action = {"name": "action", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 0.1, 0.2]}
    gate.infer = (200, {"model_name": "policy", "outputs": [action]})


def cpu_fallback(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    gate.ready_extra = {"backend_requested": "auto", "fallback": "TensorRT found no CUDA device."}


def unhealthy(lr: LocalRobot, gate: GateService, stack: contextlib.ExitStack) -> None:
    lr.config["inspect"]["State.Status"] = [0, "running unhealthy {RUNNING}\n", ""]
    lr.save_config()


@dataclass(frozen=True)
class Case:
    """One transition: a robot on 0.1.0 (0.0.9 kept as previous) is asked for ``version``; ``fault`` is
    injected first. The rest is what the robot must look like afterwards."""

    id: str
    outcome: str
    stage: str
    state: tuple[str | None, str | None]  # state.json's current, previous
    link: str | None  # where ``current`` points
    history: tuple[str, str] | None  # the last history line's action and result (None: no line written)
    releases: tuple[str, ...]  # release directories on the robot's disk (no leftovers)
    fault: Fault = no_fault
    version: str = "0.2.0"
    image: str = NEW
    request: dict[str, Any] = field(default_factory=dict)
    robot: dict[str, Any] = field(default_factory=dict)  # robot_on's arguments
    bad: tuple[str, ...] = ()  # bad-versions afterwards
    reason: tuple[str, ...] = ()  # fragments of the result's reason
    retries: dict[str, int] = field(default_factory=dict)
    docker_never: tuple[str, ...] = ()  # docker commands the robot must never have run


KEPT = ("0.0.9", "0.1.0")
AT_010 = ("0.1.0", "0.0.9")  # the robot's state untouched
SWITCHED = ("0.2.0", "0.1.0")
RESTORED = ("0.1.0", None)  # edge-update.sh's state after putting 0.1.0 back
NOT_SWITCHED = ("compose -p edge up",)  # no release was brought up
ENGINE_KEPT = (*NOT_SWITCHED, "engine prune", "volume rm")  # nor the engine cache touched


def stays(id: str, outcome: str, stage: str, history: tuple[str, str] | None, **kw: Any) -> Case:
    """A failure before the switch: the robot is left on 0.1.0 as it was (only a pulled-for release's
    files may have arrived)."""
    kw.setdefault("releases", KEPT)
    return Case(id, outcome, stage, AT_010, "releases/0.1.0", history, **kw)


def failed_after_upload(id: str, stage: str, fault: Fault, *reason: str, **kw: Any) -> Case:
    """The release's files went up, then its pull or engine build failed: nothing was switched or brought
    up, the robot stays on 0.1.0."""
    kw.setdefault("docker_never", NOT_SWITCHED)
    return stays(
        id, "failed", stage, ("deploy", "failed"), releases=(*KEPT, "0.2.0"), fault=fault, reason=reason, **kw
    )


def updated(id: str, **kw: Any) -> Case:
    """Switched to 0.2.0, gated and confirmed; 0.0.9 pruned."""
    return Case(
        id, "updated", "health", SWITCHED, "releases/0.2.0", ("deploy", "ok"), ("0.1.0", "0.2.0"), **kw
    )


def restored(id: str, *reason: str, **kw: Any) -> Case:
    """0.2.0 failed once up (its start or the gate): edge-update.sh put 0.1.0 back, 0.2.0 is marked bad."""
    kw.setdefault("bad", ("0.2.0",))
    kw.setdefault("history", ("auto-rollback", "rolled_back"))
    kw.setdefault("outcome", "rolled_back")
    return Case(
        id,
        stage="health",
        state=RESTORED,
        link="releases/0.1.0",
        releases=(*KEPT, "0.2.0"),
        reason=reason,
        **kw,
    )


CRASHED = "container edge-edge-runtime-1 exited (3)"

DEPLOY = [
    updated("switch"),
    Case(
        "already-on-version",
        "unchanged",
        "health",
        AT_010,
        "releases/0.1.0",
        ("deploy", "ok"),
        KEPT,
        version="0.1.0",
        image=OLD,
    ),
    Case(
        "same-version-other-digest",
        "updated",
        "health",
        AT_010,
        "releases/0.1.0",
        ("deploy", "ok"),
        KEPT,
        version="0.1.0",
        image=NEW,
    ),
    stays(
        "bad-version-skipped",
        "skipped",
        "bad-version",
        None,
        fault=mark_bad,
        bad=("0.2.0",),
        reason=("failed here before", "force"),
        docker_never=("pull",),
    ),
    updated("bad-version-forced", fault=mark_bad, request={"force": True}, bad=("0.2.0",)),
    stays(
        "update-lock-held",
        "skipped",
        "lock",
        ("deploy", "skipped"),
        fault=hold_update_lock,
        robot={"lock_wait_s": 0.5},
        reason=("update.lock",),
        docker_never=("pull",),
    ),
    stays(
        "disk-too-full",
        "refused",
        "disk",
        ("deploy", "refused"),
        fault=stub(df={"*": 100 * 1024}),
        reason=("only 100 MB free", "below the"),
        docker_never=("pull",),
    ),
    stays(
        "upload-broken",
        "failed",
        "upload",
        None,
        fault=broken_upload,
        reason=("uploading",),
        docker_never=("pull",),
    ),
    failed_after_upload(
        "pull-refused-final",
        "pull",
        stub(pull=[[1, "", "Error response from daemon: manifest unknown"]]),
        "manifest unknown",
        "stays on 0.1.0",
    ),
    updated(
        "pull-retried-then-pulled",
        fault=stub(pull=[[1, "", "net/http: TLS handshake timeout"], [0, "", ""]]),
        retries={"pull": 1},
    ),
    failed_after_upload(
        "pull-retried-out",
        "pull",
        stub(pull=[[1, "", "received unexpected HTTP status: 502 Bad Gateway"]]),
        "after 3 attempts",
        "stays on 0.1.0",
        retries={"pull": 2},
    ),
    failed_after_upload(  # marked bad, and the engine cache is left as it was
        "engine-build-failed",
        "engine",
        stub(prebuild=[BUILD_FAILED]),
        "TensorRT found no tactic",
        "stays on 0.1.0",
        bad=("0.2.0",),
        docker_never=ENGINE_KEPT,
    ),
    failed_after_upload(  # not marked bad: the link failed, not the release
        "engine-build-connection-lost",
        "engine",
        transport("run --rm", LOST),
        "SSH connection broke",
        "stays on 0.1.0",
        docker_never=ENGINE_KEPT,
    ),
    restored(
        "start-failed-rolled-back",
        "exit code 3",
        "model.onnx is missing",
        "restored 0.1.0",
        fault=stub(up=[[1, "", CRASHED], [0, "", ""]], logs=CRASH_LOG),
    ),
    Case(
        "start-failed-nothing-to-restore",
        "failed",
        "health",
        (None, None),
        None,
        ("auto-rollback", "failed"),
        ("0.2.0",),
        robot={"version": None},
        fault=stub(up=[[1, "", CRASHED]], logs=CRASH_LOG),
        bad=("0.2.0",),
        reason=("no previous release to restore, service stopped",),
    ),
    restored(
        "start-failed-restore-failed",
        "restoring 0.1.0 also failed",
        outcome="failed",
        history=("auto-rollback", "failed"),
        fault=stub(up=[[1, "", CRASHED]], logs=CRASH_LOG),
    ),
    restored("gate-not-healthy", "the container is not healthy", "restored 0.1.0", fault=unhealthy),
    restored("gate-readiness", "/readyz answered 503", "restored 0.1.0", fault=not_ready),
    restored("gate-smoke-error", "smoke inference answered 500", "illegal memory access", fault=smoke_error),
    restored("gate-smoke-shape", "returned action of shape [1, 3], expected [1, 2]", fault=smoke_wrong_shape),
    restored(
        "gate-backend",
        "expected backend tensorrt (the robot has gpu: true in fleet.yaml), served onnxruntime on the CPU",
        "TensorRT found no CUDA device",
        "restored 0.1.0",
        robot={"gpu": True},
        fault=cpu_fallback,
    ),
]


def arrange(tmp_path: Path, gate: GateService, case: Case, stack: contextlib.ExitStack) -> LocalRobot:
    kw: dict[str, Any] = {"kept": {"0.0.9": OLDER}, "previous": "0.0.9", **case.robot}
    if kw.get("version", "0.1.0") is None:
        kw.pop("kept"), kw.pop("previous")
    lr = robot_on(tmp_path, gate.port, **kw)
    case.fault(lr, gate, stack)
    return lr


def releases_on(lr: LocalRobot) -> tuple[str, ...]:
    """Every entry of the robot's releases/ folder, hidden ones (an upload's temporary folder) included."""
    d = lr.file("edge/releases")
    return tuple(sorted(p.name for p in d.iterdir())) if d.is_dir() else ()


def bad_versions(lr: LocalRobot) -> tuple[str, ...]:
    p = lr.file("edge/bad-versions")
    return tuple(p.read_text().split()) if p.exists() else ()


def docker_ran(lr: LocalRobot, fragment: str) -> bool:
    return any(fragment in " ".join(call) for call in lr.calls())


def check_robot(lr: LocalRobot, case: Case, history_before: int) -> None:
    """What the robot's disk says after the case: state, symlink, history, bad versions, releases."""
    wait_script_done(lr)
    st = robot_state(lr)
    assert (st.get("current"), st.get("previous")) == case.state, st
    assert current_link(lr) == case.link
    new_lines = robot_history(lr)[history_before:]
    if case.history is None:
        assert new_lines == [], new_lines
    else:
        assert new_lines, "no history line was written"
        last = new_lines[-1]
        assert (last["action"], last["result"]) == case.history, new_lines
        if last["action"] == "auto-rollback":  # written by edge-update.sh itself
            assert (last["by"], last["version"]) == ("robot", case.version), last
    assert bad_versions(lr) == case.bad
    assert releases_on(lr) == tuple(sorted(case.releases))
    for fragment in case.docker_never:
        assert not docker_ran(lr, fragment), f"the robot ran docker {fragment}: {lr.calls()}"


@pytest.mark.parametrize("case", DEPLOY, ids=[c.id for c in DEPLOY])
def test_deploy(case: Case, gate: GateService, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        lr = arrange(tmp_path, gate, case, stack)
        req = DeployRequest(case.version, case.image, **case.request)
        res = asyncio.run(RobotReleases(lr).deploy(req, {}))
    assert (res.outcome, res.stage) == (case.outcome, case.stage), res
    for fragment in case.reason:
        assert fragment in res.reason, res.reason
    assert res.retries == case.retries
    if case.outcome in ("updated", "unchanged"):
        st = robot_state(lr)
        assert (st["image"], st["last_result"]) == (case.image, case.outcome), st
        assert not res.reason and {"upload", "pull", "up", "health"} <= set(res.timings)
    check_robot(lr, case, 0)


def test_connection_lost_after_the_switch_is_reverted_by_the_robot(gate: GateService, tmp_path: Path) -> None:
    """The SSH connection dies once 0.2.0 is up, before the gate confirms it: the operator's side ends with
    the connection error, and the robot, with nobody connected, puts 0.1.0 back when the confirmation
    window ends; the version is not marked bad (the link failed, not the release)."""
    case = Case(
        "lost-after-switch",
        "",
        "",
        RESTORED,
        "releases/0.1.0",
        ("auto-rollback", "reverted"),
        (*KEPT, "0.2.0"),
    )
    with contextlib.ExitStack() as stack:
        lr = arrange(tmp_path, gate, case, stack)
        lr.transport_faults["docker ps -aq"] = LOST  # the gate's first command on the robot
        with pytest.raises(RobotUnreachable):
            asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW, confirm_timeout_s=4), {}))
    st = wait_for_state(lr, {"reverted", "rolled_back", "failed"})
    assert st["last_result"] == "reverted" and "no confirmation from the operator" in st["reason"]
    check_robot(lr, case, 0)


# --- a transaction left pending, settled at the next connection -------------------------------------------


def left_waiting(tmp_path: Path, gate: GateService) -> tuple[LocalRobot, dict[str, Any]]:
    """A robot whose switch to 0.2.0 is up and waits for a confirmation that the lost connection never
    sent (its edge-update.sh still running)."""
    lr = robot_on(tmp_path, gate.port, kept={"0.0.9": OLDER}, previous="0.0.9")
    lr.transport_faults["docker ps -aq"] = LOST
    with pytest.raises(RobotUnreachable):
        asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW, confirm_timeout_s=120), {}))
    lr.transport_faults.clear()
    return lr, wait_for_state(lr, {"awaiting_confirm"})


def test_pending_switch_of_the_same_release_is_gated_and_confirmed_by_the_re_run(
    gate: GateService, tmp_path: Path
) -> None:
    lr, _ = left_waiting(tmp_path, gate)
    res = asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW), {}))
    assert res.outcome in ("updated", "unchanged"), res
    check_robot(lr, Case("", "", "", SWITCHED, "releases/0.2.0", ("deploy", "ok"), ("0.1.0", "0.2.0")), 0)
    assert [h["result"] for h in robot_history(lr) if h["action"] == "auto-rollback"] == []


def test_pending_switch_of_another_release_is_reverted_before_the_new_rollout(
    gate: GateService, tmp_path: Path
) -> None:
    lr, _ = left_waiting(tmp_path, gate)
    res = asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.3.0", RUNTIME + "c" * 64), {}))
    assert (res.outcome, res.previous) == ("updated", "0.1.0"), res
    undone = [h for h in robot_history(lr) if h["action"] == "auto-rollback"]
    assert [(h["version"], h["result"]) for h in undone] == [("0.2.0", "rolled_back")], undone
    assert "superseded by a rollout of 0.3.0 before it was confirmed" in undone[0]["reason"]
    st = robot_state(lr)
    assert (st["current"], st["previous"]) == ("0.3.0", "0.1.0") and current_link(lr) == "releases/0.3.0"
    assert bad_versions(lr) == ()  # superseded, not failed


def test_pending_switch_whose_script_died_is_recovered_before_the_next_rollout(
    gate: GateService, tmp_path: Path
) -> None:
    """The robot rebooted (its edge-update.sh gone) while waiting for a confirmation: the next rollout first
    restores the previous release (``edge-update.sh recover``), then updates from there."""
    lr, waiting = left_waiting(tmp_path, gate)
    os.kill(waiting["pid"], signal.SIGKILL)
    res = asyncio.run(RobotReleases(lr).deploy(DeployRequest("0.2.0", NEW), {}))
    assert (res.outcome, res.previous) == ("updated", "0.1.0"), res
    undone = [h for h in robot_history(lr) if h["action"] == "auto-rollback"]
    assert [(h["version"], h["result"]) for h in undone] == [("0.2.0", "reverted")], undone
    assert "interrupted before it was confirmed" in undone[0]["reason"]
    st = robot_state(lr)
    assert (st["current"], st["previous"], st["last_result"]) == ("0.2.0", "0.1.0", "updated")


# --- rollback ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Back:
    """``rollback --to to`` (None: the recorded previous) on a robot on 0.1.0 with 0.0.9 kept as previous."""

    id: str
    outcome: str
    state: tuple[str | None, str | None]
    link: str
    history: tuple[str, str] | None
    to: str | None = None
    fault: Fault = no_fault
    robot: dict[str, Any] = field(default_factory=dict)
    deploy: DeployRequest | None = None  # the manifest of a release no longer kept
    reason: tuple[str, ...] = ()
    version: str = "0.0.9"  # the release it aimed at


BACK_FROM = ("0.0.9", "0.1.0")
GONE = RUNTIME + "7" * 64

ROLLBACK = [
    Back("to-previous", "updated", BACK_FROM, "releases/0.0.9", ("rollback", "ok")),
    Back("to-named-kept", "updated", BACK_FROM, "releases/0.0.9", ("rollback", "ok"), to="0.0.9"),
    Back(
        "no-previous",
        "refused",
        ("0.1.0", None),
        "releases/0.1.0",
        None,
        robot={"previous": None, "kept": {}},
        reason=("no previous release is recorded",),
        version="?",
    ),
    Back(
        "to-not-kept-without-manifest",
        "refused",
        AT_010,
        "releases/0.1.0",
        None,
        to="0.0.5",
        reason=("release 0.0.5 is not kept on this robot",),
        version="0.0.5",
    ),
    Back(
        "to-not-kept-from-its-manifest",
        "updated",
        ("0.0.5", "0.1.0"),
        "releases/0.0.5",
        ("rollback", "ok"),
        to="0.0.5",
        deploy=DeployRequest("0.0.5", GONE, force=True, action="rollback"),
        version="0.0.5",
    ),
    Back(
        "image-gone",
        "refused",
        AT_010,
        "releases/0.1.0",
        None,
        fault=stub(image={"RepoDigests": [0, "{RUNNING} \n", ""], OLDER: [1, "", "No such image"]}),
        reason=("release 0.0.9 has no image on this robot",),
    ),
    Back(
        "gate-failed",
        "failed",
        RESTORED,
        "releases/0.1.0",
        ("rollback", "failed"),
        fault=not_ready,
        reason=("/readyz answered 503", "0.1.0 restored"),
    ),
    Back(
        "start-failed",
        "failed",
        RESTORED,
        "releases/0.1.0",
        ("rollback", "failed"),
        fault=stub(up=[[1, "", "container edge-edge-runtime-1 exited (3)"], [0, "", ""]], logs=CRASH_LOG),
        reason=("exit code 3", "0.1.0 restored"),
    ),
    Back(
        "update-lock-held",
        "skipped",
        AT_010,
        "releases/0.1.0",
        ("rollback", "failed"),
        fault=hold_update_lock,
        robot={"lock_wait_s": 0.5},
        reason=("update.lock",),
    ),
]


@pytest.mark.parametrize("case", ROLLBACK, ids=[c.id for c in ROLLBACK])
def test_rollback(case: Back, gate: GateService, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        lr = robot_on(tmp_path, gate.port, **{"kept": {"0.0.9": OLDER}, "previous": "0.0.9", **case.robot})
        case.fault(lr, gate, stack)
        res: RobotResult = asyncio.run(
            RobotReleases(lr).rollback(case.to, 60, deploy=case.deploy, not_kept_hint="")
        )
    assert (res.outcome, res.version) == (case.outcome, case.version), res
    for fragment in case.reason:
        assert fragment in res.reason, res.reason
    wait_script_done(lr)
    st = robot_state(lr)
    assert (st.get("current"), st.get("previous")) == case.state, st
    assert current_link(lr) == case.link
    history = robot_history(lr)
    if case.history is None:
        assert history == [], history
    else:  # the operator's own last line: edge-update.sh appends its restore line at about the same time
        mine = [h for h in history if h.get("by") != "robot"]
        assert mine and (mine[-1]["action"], mine[-1]["result"]) == case.history, history
    assert bad_versions(lr) == ()  # a rollback never marks a release bad
    if case.outcome == "updated" and case.deploy is None:
        assert st["last_result"] == "rolled_back_by_user"
        assert not docker_ran(lr, "pull")  # kept on the robot: nothing is downloaded
