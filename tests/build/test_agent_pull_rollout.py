"""The operator's pull-mode rollout against three real agents: each robot's shell is a real ``sh`` here
(tests/build/local_robot.py), channels are real signed artifacts in the registry, and telemetry goes
through a real Prometheus pushgateway (the Debian package scripts/host-setup installs). The agents check
their channel whenever the operator waits, so the waves run without real time passing between checks.

Buckets: arm-3 is 26, arm-2 49, arm-1 76; at 34 % only arm-3 takes a release."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_deploy.agent.config import config_from_dict
from edge_deploy.agent.local import LocalConnection
from edge_deploy.agent.loop import Agent
from edge_deploy.fleet import FleetError
from edge_deploy.fleet.outcome import NOT_REACHED, ROLLED_BACK, UPDATED
from edge_deploy.fleet.pull import PullRolloutOptions, pull_rollout, pull_status, wave_plan
from edge_deploy.release.channel import bucket, publish_channel, read_channel
from edge_deploy.release.manifest import ReleaseManifest, save_release
from tests.build.channels import PASSWORD, key_pair, need_registry_and_cosign, push_image, release, sign
from tests.build.local_robot import GateService, LocalRobot, no_waits, robot_on, robot_state
from tests.support import need

pytestmark = pytest.mark.docker
NAMES = ("arm-1", "arm-2", "arm-3")


class RobotAgent(Agent):
    """An agent whose robot is a LocalRobot's home and stand-in commands."""

    def __init__(self, config: Any, lr: LocalRobot) -> None:
        super().__init__(config)
        self.lr = lr
        self.online = True

    def connection(self) -> LocalConnection:
        env = {"PATH": self.lr.env["PATH"], "EDGE_STUB_DIR": self.lr.env["EDGE_STUB_DIR"]}
        return LocalConnection(self.robot, home=self.lr.home, env=env)


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[str]:
    path = shutil.which("prometheus-pushgateway")
    need(path is not None, "prometheus-pushgateway (scripts/host-setup installs it)")
    assert path is not None
    for _ in range(5):  # a port another process took between our pick and the gateway's bind: pick again
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [path, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if proc.poll() is None and httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        time.sleep(0.2)
        if proc.poll() is None:  # ours serves the port (one that lost the bind has exited)
            break
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Fleet:
    repo: str
    key: Path
    pub: Path
    releases: Path
    agents: dict[str, RobotAgent]
    gateway: str
    gate: GateService
    channel: str

    def tick(self, _seconds: float = 0) -> None:
        """What happens while the operator waits: every online robot checks its channel once."""
        for a in self.agents.values():
            if a.online:
                asyncio.run(a.check_once())

    def manifest(self, version: str) -> ReleaseManifest:
        from edge_deploy.release.manifest import load_release

        return load_release(version, self.releases)

    def options(self, version: str, **kw: Any) -> PullRolloutOptions:
        return PullRolloutOptions(
            version=version,
            channel=self.channel,
            repository=self.repo,
            sign_key=self.key,
            public_key=self.pub,
            releases_dir=self.releases,
            pushgateway=self.gateway,
            password=PASSWORD,
            **{"wave_timeout_s": 60.0, **kw},
        )

    def pulled(self, name: str) -> list[str]:
        return [c[-1].rpartition("@")[2] for c in self.agents[name].lr.calls() if c[:1] == ["pull"]]


@pytest.fixture
def fleet(tmp_path: Path, pushgateway: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    need_registry_and_cosign()
    no_waits(monkeypatch, poll_s=0.1)
    key, pub = key_pair(tmp_path / "keys")
    repo_name = f"edge-deploy-pull/{secrets.token_hex(4)}"
    channel = f"stable-{secrets.token_hex(3)}"  # this fixture's own: no other report on the gateway counts
    releases = tmp_path / "releases"
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        image = push_image(repo_name)
        sign(image, key)
        save_release(release(version, image), releases)
    repo = f"{image.repository}"
    with GateService().serving() as gate:
        agents = {}
        for name in NAMES:
            lr = robot_on(tmp_path / name, gate.port, version=None)
            cfg = config_from_dict(
                {
                    "robot": name,
                    "repository": repo,
                    "channel": channel,
                    "public_key": str(pub),
                    "pushgateway": pushgateway,
                    "service_port": gate.port,
                    "gpu": False,
                    "lock_wait_s": 5,
                    "health_timeout_s": 30,
                    "confirm_timeout_s": 30,
                },
                lr.home,
            )
            agents[name] = RobotAgent(cfg, lr)
        f = Fleet(repo, key, pub, releases, agents, pushgateway, gate, channel)
        publish_channel(repo, channel, f.manifest("0.1.0"), 100, key, password=PASSWORD)
        f.tick()  # every robot starts on 0.1.0 and has reported
        assert {n: robot_state(a.lr).get("current") for n, a in agents.items()} == dict.fromkeys(
            NAMES, "0.1.0"
        )
        yield f
        for name in NAMES:  # the gateway is shared by the module's tests: forget these robots
            httpx.delete(f"{pushgateway}/metrics/job/edge_robot/robot/{name}", timeout=5)


def test_buckets_of_the_three_robots() -> None:
    assert [bucket(n) for n in NAMES] == [76, 49, 26]
    assert wave_plan((34,), 0, []) == [34, 68, 100]
    assert wave_plan((34, 100), 1, [76, 49, 26]) == [27, 34, 100]
    assert wave_plan((10, 5, 50), 0, []) == [10, 50, 100]
    with pytest.raises(FleetError, match="more than 0 and at most 100"):
        wave_plan((0,), 0, [])


def test_a_good_release_is_staged_to_every_robot(fleet: Fleet) -> None:
    said: list[tuple[str, str, str]] = []
    res = pull_rollout(
        fleet.options("0.2.0", wave_percents=(34,)), lambda *a: said.append(a), sleep=fleet.tick
    )
    assert res.ok, res.to_dict()
    assert [w["percent"] for w in res.waves] == [34, 68, 100]
    assert [w["robots"] for w in res.waves] == [["arm-3"], ["arm-2"], ["arm-1"]]
    assert {r.robot: (r.outcome, r.version, r.wave) for r in res.robots} == {
        "arm-3": (UPDATED, "0.2.0", 1),
        "arm-2": (UPDATED, "0.2.0", 2),
        "arm-1": (UPDATED, "0.2.0", 3),
    }
    assert read_channel(fleet.repo, fleet.channel, fleet.pub).percent == 100
    rows = pull_status(pushgateway=fleet.gateway, channel=fleet.channel)
    assert [(r["robot"], r["version"], r["healthy"]) for r in rows] == [(n, "0.2.0", True) for n in NAMES]


def test_a_broken_release_stops_at_its_canary_and_the_channel_is_reverted(fleet: Fleet) -> None:
    v3 = fleet.manifest("0.3.0").runtime.digest
    fleet.gate.ready = False  # 0.3.0 never turns ready where it runs
    res = pull_rollout(fleet.options("0.3.0", wave_percents=(34,), canary=1), sleep=fleet.tick)
    fleet.gate.reset()
    assert not res.ok and res.stopped and "in the canary wave" in res.stop_reason
    assert res.waves[0]["percent"] == 27 and res.waves[0]["robots"] == ["arm-3"]
    assert [(r.robot, r.outcome, r.version) for r in res.robots] == [("arm-3", ROLLED_BACK, "0.1.0")]
    assert res.reverted_to == "0.1.0"
    ch = read_channel(fleet.repo, fleet.channel, fleet.pub)
    assert (ch.version, ch.percent) == ("0.1.0", 100)
    fleet.tick()  # after the revert: every robot stays on 0.1.0
    assert {n: robot_state(a.lr)["current"] for n, a in fleet.agents.items()} == dict.fromkeys(NAMES, "0.1.0")
    assert v3 in fleet.pulled("arm-3")
    assert v3 not in fleet.pulled("arm-1") and v3 not in fleet.pulled("arm-2")  # never pulled it
    assert (fleet.agents["arm-3"].lr.file("edge/bad-versions").read_text().split()) == ["0.3.0"]


def test_an_offline_robot_is_not_a_failure_and_catches_up(fleet: Fleet) -> None:
    fleet.agents["arm-1"].online = False
    res = pull_rollout(fleet.options("0.2.0", wave_percents=(50,), wave_timeout_s=3.0), sleep=fleet.tick)
    assert res.ok, res.to_dict()
    outcomes = {r.robot: r.outcome for r in res.robots}
    assert outcomes == {"arm-3": UPDATED, "arm-2": UPDATED, "arm-1": NOT_REACHED}
    assert robot_state(fleet.agents["arm-1"].lr)["current"] == "0.1.0"
    fleet.agents["arm-1"].online = True  # it comes back
    fleet.tick()
    assert robot_state(fleet.agents["arm-1"].lr)["current"] == "0.2.0"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "pass one of --prometheus or --pushgateway"),
        (["--pushgateway", "http://127.0.0.1:9", "--prometheus", "http://127.0.0.1:9"], "pass one of"),
        (
            ["--pushgateway", "http://127.0.0.1:9", "--group", "lab"],
            "in --mode pull the channel's percentage",
        ),
        (["--pushgateway", "http://127.0.0.1:9", "--wave-size", "2"], "in --mode pull use --wave-percent"),
        (["--pushgateway", "http://127.0.0.1:9"], "needs the fleet's public key"),
    ],
)
def test_pull_rollout_usage_errors_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    from tests.build.cli_helpers import run_cli

    code, out, err = run_cli(
        capsys, "fleet", "rollout", "0.2.0", "--mode", "pull", "--fleet", str(tmp_path / "none.yaml"), *args
    )
    assert code == 2 and out == "" and says in err and "Traceback" not in err, err


def test_push_mode_takes_one_wave_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.build.cli_helpers import run_cli

    code, _, err = run_cli(
        capsys,
        "fleet",
        "rollout",
        "0.2.0",
        "--wave-percent",
        "34",
        "--wave-percent",
        "100",
        "--fleet",
        str(tmp_path / "none.yaml"),
    )
    assert code == 2 and "Several --wave-percent values are for --mode pull" in err, err


def test_the_cli_publishes_and_reports_in_json(
    tmp_path: Path, pushgateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fleet rollout --mode pull`` end to end on a channel no robot follows yet: every wave is empty, so
    it publishes 34, 68 and 100 % (each signed) and ends ok with no robot to judge."""
    import json

    from tests.build.cli_helpers import run_cli

    need_registry_and_cosign()
    key, pub = key_pair(tmp_path / "keys")
    image = push_image(f"edge-deploy-pull/{secrets.token_hex(4)}")
    sign(image, key)
    save_release(release("0.4.0", image), tmp_path / "releases")
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    channel = f"cli-{secrets.token_hex(3)}"
    args = ["fleet", "rollout", "0.4.0", "--mode", "pull", "--channel", channel, "--wave-percent", "34"]
    args += ["--sign-key", str(key), "--key", str(pub), "--releases-dir", str(tmp_path / "releases")]
    code, out, err = run_cli(
        capsys, *args, "--pushgateway", pushgateway, "--fleet", str(tmp_path / "no.yaml"), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert [w["percent"] for w in summary["waves"]] == [34, 68, 100] and summary["robots"] == []
    assert summary["ok"] and summary["repository"] == image.repository
    ch = read_channel(image.repository, channel, pub)
    assert (ch.version, ch.percent) == ("0.4.0", 100)
    unsigned = push_image(image.repository.split("/", 1)[1])  # a release whose image nobody signed
    save_release(release("0.5.0", unsigned), tmp_path / "releases")
    code, out, err = run_cli(
        capsys, *[a.replace("0.4.0", "0.5.0") for a in args], "--pushgateway", pushgateway
    )
    assert code == 2 and out == "" and "is not signed" in err, err
    assert read_channel(image.repository, channel, pub).version == "0.4.0"  # never published
