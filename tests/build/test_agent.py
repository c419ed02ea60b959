"""The robot agent (pull mode) on the same deploy state machine as SSH mode, against a robot whose shell is
a real ``sh`` on this machine (tests/build/local_robot.py: the update lock's ``flock``, the switch's
``mv``/``ln`` and edge-update.sh run for real; docker/df answer from a script; the health gate talks to a
tiny HTTP server on loopback), reading channels from the real registry, signed with real cosign keys."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_deploy.agent.config import config_from_dict
from edge_deploy.agent.loop import (
    BAD_VERSION,
    CURRENT,
    DEPLOY,
    NOT_IN_ROLLOUT,
    OFFLINE,
    ROLLBACK,
    Agent,
    CheckResult,
    site_ref,
)
from edge_deploy.fleet.outcome import REFUSED, ROLLED_BACK, SKIPPED, UPDATED
from edge_deploy.release.channel import bucket, publish_channel
from edge_deploy.release.manifest import ReleaseImage, ReleaseManifest
from tests.build.channels import PASSWORD, key_pair, need_registry_and_cosign, push_image, release, sign
from tests.build.cli_helpers import run_cli
from tests.build.local_robot import GateService, LocalRobot, no_waits, robot_history, robot_on, robot_state

pytestmark = pytest.mark.docker


@dataclass
class Registry:
    repo: str
    key: Path
    pub: Path
    other_key: Path
    v1: ReleaseManifest
    v2: ReleaseManifest


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    need_registry_and_cosign()
    root = tmp_path_factory.mktemp("agent-keys")
    key, pub = key_pair(root / "fleet")
    other_key, _ = key_pair(root / "other")
    name = f"edge-deploy-agent/{secrets.token_hex(4)}"
    images: list[ReleaseImage] = []
    for _ in range(2):
        image = push_image(name)
        sign(image, key)
        images.append(image)
    return Registry(
        images[0].repository, key, pub, other_key, release("0.1.0", images[0]), release("0.2.0", images[1])
    )


@pytest.fixture(scope="module")
def service() -> Iterator[GateService]:
    with GateService().serving() as gate:
        yield gate


@pytest.fixture
def gate(service: GateService) -> Iterator[GateService]:
    service.reset()
    yield service
    service.reset()


@pytest.fixture
def robot(tmp_path: Path, gate: GateService, monkeypatch: pytest.MonkeyPatch) -> LocalRobot:
    """A fresh robot (no release yet) whose shell is this machine's, seen by the agent as its own."""
    no_waits(monkeypatch, poll_s=0.1)
    lr = robot_on(tmp_path, gate.port, version=None)
    for name in ("HOME", "PATH", "EDGE_STUB_DIR"):
        monkeypatch.setenv(name, lr.env[name])
    return lr


def channel_name() -> str:
    return f"t-{secrets.token_hex(3)}"


def agent_for(lr: LocalRobot, reg: Registry, channel: str, **over: Any) -> Agent:
    raw: dict[str, Any] = {
        "robot": lr.robot.name,
        "repository": reg.repo,
        "channel": channel,
        "public_key": str(reg.pub),
        "compose_dir": "edge",
        "service_port": lr.service_port,
        "gpu": False,
        "lock_wait_s": 5,
        "health_timeout_s": 30,
        "confirm_timeout_s": 30,
        "poll_interval_s": 10,
        "poll_jitter_s": 2,
        **over,
    }
    return Agent(config_from_dict(raw, lr.home))


def publish(
    reg: Registry, channel: str, m: ReleaseManifest, percent: int = 100, key: Path | None = None
) -> None:
    publish_channel(reg.repo, channel, m, percent, key or reg.key, password=PASSWORD)


def check(agent: Agent) -> CheckResult:
    return asyncio.run(agent.check_once())


def ups(lr: LocalRobot) -> int:
    return sum(1 for c in lr.calls() if c[:1] == ["compose"] and "up" in c)


def test_applies_the_channel_release_once(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    agent = agent_for(robot, reg, ch)
    first = check(agent)
    assert (first.action, first.outcome, first.version) == (DEPLOY, UPDATED, "0.1.0"), first.reason
    assert first.healthy and first.channel_version == "0.1.0" and first.percent == 100
    state = robot_state(robot)
    assert state["current"] == "0.1.0" and state["image"] == reg.v1.runtime.ref
    assert robot.file("edge/current").resolve().name == "0.1.0"
    assert [h["result"] for h in robot_history(robot) if h.get("action") == "deploy"][-1] == "ok"
    n = ups(robot)
    again = check(agent)
    assert (again.action, again.version) == (CURRENT, "0.1.0")
    assert ups(robot) == n  # nothing redeployed


def test_a_robot_outside_the_percentage_waits(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    b = bucket(robot.robot.name)
    publish(reg, ch, reg.v1, percent=b)  # taken only when bucket < percent
    res = check(agent_for(robot, reg, ch))
    assert (res.action, res.version) == (NOT_IN_ROLLOUT, None), res
    assert f"bucket {b}" in res.reason and not robot_state(robot)
    publish(reg, ch, reg.v1, percent=b + 1)
    assert check(agent_for(robot, reg, ch)).outcome == UPDATED


def test_a_channel_signed_with_another_key_deploys_nothing(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1, key=reg.other_key)
    res = check(agent_for(robot, reg, ch))
    assert (res.action, res.outcome) == (REFUSED, REFUSED)
    assert "no signature that the fleet's public key verifies" in res.reason
    assert not robot_state(robot) and ups(robot) == 0
    assert not any(c[:1] == ["pull"] for c in robot.calls())


def test_offline_keeps_the_release_backs_off_and_catches_up(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    online = agent_for(robot, reg, ch)
    assert check(online).outcome == UPDATED
    publish(reg, ch, reg.v2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    offline = agent_for(robot, reg, ch, repository=reg.repo.replace(reg.repo.split("/")[0], dead))
    waits = []
    for _ in range(3):
        res = check(offline)
        assert (res.action, res.outcome, res.version) == (OFFLINE, "", "0.1.0"), res
        assert res.healthy and "keeps its release" in res.reason
        waits.append(offline.next_wait(res))
    assert offline.failures == 3
    assert waits[0] < waits[1] < waits[2] <= 10 * 4 + 2  # 10 s interval doubling, plus up to 2 s jitter
    assert 10 <= online.next_wait(CheckResult("arm-1", ch, 0, CURRENT)) <= 12
    assert robot_state(robot)["current"] == "0.1.0"
    back = check(replace_config(offline, repository=reg.repo))  # the link returns
    assert (back.action, back.outcome, back.version) == (DEPLOY, UPDATED, "0.2.0"), back.reason


def replace_config(agent: Agent, **changes: Any) -> Agent:
    fresh = Agent(replace(agent.config, **changes))
    fresh.failures = agent.failures
    return fresh


def test_a_failed_release_rolls_back_and_is_not_tried_again(
    robot: LocalRobot, reg: Registry, gate: GateService
) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    agent = agent_for(robot, reg, ch)
    assert check(agent).outcome == UPDATED
    publish(reg, ch, reg.v2)
    gate.ready = False  # 0.2.0 never turns ready: the gate fails, edge-update.sh restores 0.1.0
    res = check(agent)
    assert (res.action, res.outcome, res.version) == (DEPLOY, ROLLED_BACK, "0.1.0"), res
    assert robot_state(robot)["current"] == "0.1.0"
    assert robot.file("edge/bad-versions").read_text().split() == ["0.2.0"]
    gate.reset()
    n = ups(robot)
    again = check(agent)
    assert (again.action, again.outcome, again.version) == (BAD_VERSION, SKIPPED, "0.1.0")
    assert ups(robot) == n
    assert agent.last_result() == ROLLED_BACK  # reported until the agent acts again


def test_a_reverted_channel_rolls_back_to_the_kept_release(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    agent = agent_for(robot, reg, ch)
    for m in (reg.v1, reg.v2):
        publish(reg, ch, m)
        assert check(agent).outcome == UPDATED
    pulls = [c for c in robot.calls() if c[:1] == ["pull"]]
    publish(reg, ch, reg.v1)  # the operator reverts the channel
    res = check(agent)
    assert (res.action, res.outcome, res.version) == (ROLLBACK, UPDATED, "0.1.0"), res.reason
    assert robot_state(robot)["previous"] == "0.2.0"
    assert robot_history(robot)[-1]["action"] == "rollback"
    assert [c for c in robot.calls() if c[:1] == ["pull"]] == pulls  # nothing downloaded


class Gateway:
    """A stand-in pushgateway on loopback: records each pushed body by path."""

    def __init__(self) -> None:
        pushes: list[tuple[str, str]] = []
        self.pushes = pushes

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                pushes.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_reports_each_check_and_a_dead_pushgateway_stops_nothing(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    gw = Gateway()
    try:
        res = check(agent_for(robot, reg, ch, pushgateway=gw.url))
    finally:
        gw.close()
    assert res.reported and res.outcome == UPDATED
    ((path, body),) = gw.pushes
    assert path == "/metrics/job/edge_robot/robot/arm-1"
    assert f'edge_robot_info{{channel="{ch}",engine_state=' in body and 'version="0.1.0"' in body
    assert (
        'last_result="updated"' in body and f'edge_robot_bucket{{channel="{ch}"}} {bucket("arm-1")}.0' in body
    )
    assert f'edge_robot_healthy{{channel="{ch}"}} 1.0' in body
    dead = check(agent_for(robot, reg, ch, pushgateway=gw.url))  # the gateway is gone now
    assert (dead.action, dead.reported, dead.version) == (CURRENT, False, "0.1.0")


def test_images_are_pulled_through_the_site_cache_by_digest(robot: LocalRobot, reg: Registry) -> None:
    ref = "registry.example:5000/fleet/runtime@sha256:" + "c" * 64
    assert site_ref(ref, "cache.site-a:5000") == "cache.site-a:5000/fleet/runtime@sha256:" + "c" * 64
    assert site_ref(ref, None) == ref
    ch = channel_name()
    publish(reg, ch, reg.v1)
    res = check(agent_for(robot, reg, ch, site_cache="127.0.0.1:5999"))
    assert res.outcome == UPDATED
    want = "127.0.0.1:5999/" + reg.v1.runtime.ref.split("/", 1)[1]
    assert [c[-1] for c in robot.calls() if c[:1] == ["pull"]] == [want]
    assert robot_state(robot)["image"] == want


def test_run_once_from_the_cli_prints_one_json_line(
    robot: LocalRobot, reg: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    cfg = robot.home / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "robot": "arm-1",
                "repository": reg.repo,
                "channel": ch,
                "public_key": str(reg.pub),
                "service_port": robot.service_port,
                "gpu": False,
                "lock_wait_s": 5,
            }
        )
    )
    code, out, err = run_cli(capsys, "agent", "run", "--config", str(cfg), "--once", "-q")
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["action"], line["outcome"], line["version"]) == (DEPLOY, UPDATED, "0.1.0")
    publish(reg, ch, reg.v1, key=reg.other_key)
    code, out, err = run_cli(capsys, "agent", "run", "--config", str(cfg), "--once", "-q")
    assert code == 2 and json.loads(out)["action"] == REFUSED


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        (
            "docker_host",
            "tcp://x;rm -rf /",
            "'docker_host' is invalid: expected unix:///path or tcp://HOST:PORT",
        ),
        ("site_cache", "cache:5000/evil", "'site_cache' is invalid: expected HOST:PORT"),
        ("compose_dir", "../etc", "'compose_dir' is invalid"),
        ("channel", "Stable", "'channel' is invalid"),
        ("pushgateway", "file:///etc/passwd", "'pushgateway' is invalid"),
        ("poll_interval_s", 0, "'poll_interval_s' is invalid: expected 1 to 86400 seconds"),
        ("robot", "arm 1", "'name' is invalid"),
        ("colour", "blue", "has an unknown field 'colour'"),
    ],
)
def test_bad_config_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object, says: str
) -> None:
    raw = {"robot": "arm-1", "repository": "127.0.0.1:5000/fleet/runtime", "public_key": "cosign.pub"}
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({**raw, field: value}))
    code, out, err = run_cli(capsys, "agent", "run", "--config", str(cfg), "--once")
    assert code != 0 and out == ""
    assert says in err and err.startswith("error: Agent config ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_an_unsigned_channel_is_refused_then_a_fixed_one_taken(robot: LocalRobot, reg: Registry) -> None:
    from edge_deploy.release.channel import push_channel_artifact

    ch = channel_name()
    push_channel_artifact(reg.repo, ch, reg.v1, 100)  # no signature
    agent = agent_for(robot, reg, ch)
    res = check(agent)
    assert (res.action, res.outcome) == (REFUSED, REFUSED) and "is not signed" in res.reason
    assert not robot_state(robot) and agent.last_result() == REFUSED
    publish(reg, ch, reg.v1)
    assert check(agent).outcome == UPDATED
    assert check(agent).action == CURRENT and agent.last_result() == UPDATED


def test_a_failure_of_the_robots_own_shell_is_a_failed_check_still_reported(
    robot: LocalRobot, reg: Registry
) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    robot.file("edge").write_text("not a directory\n")  # the compose directory cannot be made
    gw = Gateway()
    try:
        res = check(agent_for(robot, reg, ch, pushgateway=gw.url))
    finally:
        gw.close()
    assert (res.action, res.outcome) == (
        DEPLOY,
        "failed",
    ) and "finding Docker's data root failed" in res.reason, res
    assert res.reported and len(gw.pushes) == 1


def test_the_loop_waits_between_checks_and_stops_when_told(robot: LocalRobot, reg: Registry) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v1)
    agent = agent_for(robot, reg, ch, poll_interval_s=1, poll_jitter_s=0)
    seen: list[CheckResult] = []

    async def two_checks() -> CheckResult | None:
        return await agent.run(max_checks=2, on_check=seen.append)

    last = asyncio.run(two_checks())
    assert [r.action for r in seen] == [DEPLOY, CURRENT] and last is seen[-1]

    async def stopped_after_one() -> None:
        stop = asyncio.Event()
        await agent.run(stop, on_check=lambda r: (seen.append(r), stop.set()))

    asyncio.run(asyncio.wait_for(stopped_after_one(), 30))
    assert [r.action for r in seen] == [DEPLOY, CURRENT, CURRENT]


def test_agent_check_verifies_and_changes_nothing(
    robot: LocalRobot, reg: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = channel_name()
    publish(reg, ch, reg.v2, percent=bucket("arm-1"))
    cfg = robot.home / "agent.yaml"
    raw = {"robot": "arm-1", "repository": reg.repo, "channel": ch, "public_key": str(reg.pub)}
    cfg.write_text(yaml.safe_dump(raw))
    code, out, err = run_cli(capsys, "agent", "check", "--config", str(cfg))
    assert code == 0, err
    said = json.loads(out)
    assert (said["version"], said["bucket"], said["for_this_robot"]) == ("0.2.0", bucket("arm-1"), False)
    assert said["runtime"] == reg.v2.runtime.ref and not robot_state(robot) and robot.calls() == []
    publish(reg, ch, reg.v2, key=reg.other_key)
    code, out, err = run_cli(capsys, "agent", "check", "--config", str(cfg))
    assert code == 2 and out == "" and "no signature that the fleet's public key verifies" in err, err


def test_a_switch_left_pending_by_a_dead_update_is_settled_at_the_next_check(
    robot: LocalRobot, reg: Registry
) -> None:
    ch = channel_name()
    agent = agent_for(robot, reg, ch)
    for m in (reg.v1, reg.v2):
        publish(reg, ch, m)
        assert check(agent).outcome == UPDATED
    # The agent died while edge-update.sh waited for its confirmation of 0.2.0, and the script died too.
    state = robot_state(robot)
    state.update({"last_result": "awaiting_confirm", "txn": "deadbeef0001", "pid": 2**22 + 7})
    robot.file("edge/state.json").write_text(json.dumps(state, indent=2))
    res = check(agent)
    history = robot_history(robot)
    recovered = [h for h in history if "interrupted before it was confirmed" in str(h.get("reason", ""))]
    assert recovered, history[-3:]  # edge-update.sh recover put 0.1.0 back first
    # then the channel's release again, from what the robot keeps (nothing downloaded)
    assert (res.action, res.outcome, res.version) == (ROLLBACK, UPDATED, "0.2.0"), res
    assert robot_state(robot)["current"] == "0.2.0" and agent.last_result() == UPDATED
