"""Pull mode end to end: three simulated robots (own dockerd each, arm64 under QEMU) run agents
(``edge-deploy agent run``) that follow one signed channel, pull through a site cache (``docker-registry``
in proxy mode) and report to a pushgateway that Prometheus scrapes; the operator rolls out with
``pull_rollout`` and reads the fleet from Prometheus. Everything is on loopback and started by the
simulation (simulation/pull.py) from Debian packages.

The site cache's upstream is a second ``docker-registry`` in front of the fleet registry (the "meter"):
its access log counts what crossed into the site, layer by layer.

The tests share the fleet and each brings it to the good release first (``PullFleet.at_good``), so any one
runs alone: a good release staged 34 % → 100 %; a broken release at 34 % aborted and reverted; unsigned and
re-signed channels refused; a robot offline during a release catching up when it returns."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_deploy.fleet import site as sites
from edge_deploy.fleet import telemetry
from edge_deploy.release.channel import bucket
from edge_deploy.release.manifest import ReleaseManifest, load_release, save_release
from tests.e2e.fleet_fixtures import PLATFORM, REGISTRY, REPO, REPO_NAME, FleetImages, need_fleet_host, sh
from tests.support import need_tool

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

PASSWORD = "pull-mode-e2e"
WAVES = (34.0, 100.0)
WAVE_TIMEOUT = 600.0  # a first start under QEMU on a loaded 2-core host takes minutes
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def fleet_name() -> str:
    """A fleet name whose three robots fall one below 34 and two above it (buckets hash robot names)."""
    for i in range(1000):
        name = f"pm{i}"
        low = [n for n in range(1, 4) if bucket(f"{name}-robot-{n}") < 34]
        if len(low) == 1:
            return name
    raise AssertionError("no fleet name splits three robots one below 34 %")


@dataclass
class PullFleet:
    sim: Any
    meter: sites.Site
    channel: str
    key: Path
    public_key: Path
    releases: Path
    images: FleetImages
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.sim.robots]

    @property
    def low(self) -> str:
        """The robot whose bucket is below 34: the only one in a 34 % wave."""
        return next(n for n in self.names if bucket(n) < 34)

    @property
    def prometheus(self) -> str:
        return str(self.sim.pull["prometheus"])

    def release(self, version: str, ref: str) -> ReleaseManifest:
        """``ref`` signed with the fleet's key and written as ``releases/<version>.json``."""
        from edge_deploy.release.signing import sign_image

        if (self.releases / f"{version}.json").is_file():
            return load_release(version, self.releases)
        manifest = ReleaseManifest.for_runtime_image(version, ref, "test")
        manifest.runtime.signature = sign_image(ref, self.key, password=PASSWORD)
        save_release(manifest, self.releases)
        return manifest

    def rollout(self, version: str, progress: Any = None, **options: Any) -> Any:
        from edge_deploy.fleet.pull import PullRolloutOptions, pull_rollout

        opts = PullRolloutOptions(
            version=version,
            channel=self.channel,
            repository=REPO,
            sign_key=self.key,
            public_key=self.public_key,
            releases_dir=self.releases,
            wave_percents=options.pop("wave_percents", WAVES),
            prometheus=self.prometheus,
            wave_timeout_s=WAVE_TIMEOUT,
            password=PASSWORD,
            **options,
        )
        return pull_rollout(opts, progress)

    def at_good(self) -> ReleaseManifest:
        """Every robot on the good release 1.0.0, healthy: as the earlier tests leave them, or rolled out
        at 100 % when a test runs alone."""
        manifest = self.release("1.0.0", self.images.label("pull-good"))
        reports = self.reports()
        if len(reports) < 3 or any(r.version != "1.0.0" for r in reports.values()):
            res = self.rollout("1.0.0", wave_percents=(100.0,))
            assert not res.stopped, res.stop_reason
        self.wait_reports(
            lambda r: len(r) == 3 and all(x.version == "1.0.0" and x.healthy for x in r.values()),
            300,
            "every robot healthy on 1.0.0",
        )
        return manifest

    def reports(self) -> dict[str, telemetry.RobotReport]:
        return telemetry.read_fleet(self.prometheus, self.channel)

    def wait_reports(self, want: Any, timeout: float = WAVE_TIMEOUT, what: str = "") -> dict[str, Any]:
        """Until ``want(reports)`` holds; the last reports in the failure message."""
        deadline = time.monotonic() + timeout
        reports: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                reports = self.reports()
            except Exception:
                reports = {}
            if want(reports):
                return reports
            time.sleep(2)
        raise AssertionError(
            f"{what} within {timeout:.0f} s: {json.dumps({n: r.to_dict() for n, r in reports.items()}, indent=1)}\n{self.agent_logs()}"
        )

    def agent_logs(self, lines: int = 15) -> str:
        out = []
        for r in self.sim.robots:
            log = Path(self.sim.state_dir) / "robots" / r.name / "agent.log"
            tail = log.read_text(errors="replace").splitlines()[-lines:] if log.is_file() else []
            out.append(f"--- {r.name} agent.log\n" + "\n".join(tail))
        return "\n".join(out)

    def images_on(self, name: str) -> str:
        """Every image digest the robot's own engine holds."""
        robot = self.sim.robot(name)
        return sh(
            "docker", "-H", f"unix://{robot.socket}", "images", "--digests", "--no-trunc", timeout=120
        ).stdout


def layers_of(ref: str) -> list[str]:
    """The blob digests (config and layers) of ``ref``'s PLATFORM image, from the fleet registry."""
    repo_digest = ref.split("@", 1)[1]
    with httpx.Client(timeout=30) as client:
        doc = client.get(
            f"http://{REGISTRY}/v2/{REPO_NAME}/manifests/{repo_digest}", headers={"Accept": ACCEPT}
        ).json()
        if "manifests" in doc:
            os_, arch = PLATFORM.split("/")
            entry = next(
                m for m in doc["manifests"] if (m.get("platform") or {}).get("architecture") == arch
                and (m.get("platform") or {}).get("os") == os_
            )  # fmt: skip
            doc = client.get(
                f"http://{REGISTRY}/v2/{REPO_NAME}/manifests/{entry['digest']}", headers={"Accept": ACCEPT}
            ).json()
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]


@pytest.fixture(scope="module")
def fleet(fleet_images: FleetImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PullFleet]:
    from edge_deploy.release.signing import generate_key_pair
    from edge_deploy.simulation import simulate as sim
    from edge_deploy.simulation.processes import free_port

    need_fleet_host()
    for tool in ("cosign", "docker-registry", "prometheus", "prometheus-pushgateway"):
        need_tool(tool)
    work = tmp_path_factory.mktemp("pull")
    key, public_key = generate_key_pair(work / "keys", PASSWORD)
    channel = f"e2e-{uuid.uuid4().hex[:8]}"
    meter_port = free_port(17400, set())
    meter = sites.site_up(
        "meter",
        f"http://{REGISTRY}",
        listen=f"127.0.0.1:{meter_port}",
        state_root=Path("/var/tmp") / f"edge-meter-{channel}",
    )
    try:
        agents = {
            "repository": REPO,
            "channel": channel,
            "public_key": public_key,
            "poll_interval_s": 3.0,
            "poll_jitter_s": 2.0,
            # stop-start: this file tests pull mode; the hand-over has its own e2e (under QEMU here its gate
            # can find the new container still starting, and the release is rolled back)
            "extra": {"update_strategy": "stop-start"},
        }
        with sim.simulated(
            3,
            fleet_name(),
            registry=REGISTRY,
            platform=PLATFORM,
            mode="pull",
            agents=agents,
            site_upstream=f"http://{meter.listen}",
            ssh_port_base=2750,
            service_port_base=18750,
        ) as s:
            f = PullFleet(s, meter, channel, key, public_key, work / "releases", fleet_images)
            try:
                yield f
            finally:
                print("\npull mode numbers:", json.dumps(f.numbers, indent=2))
    finally:
        sites.site_down(meter, purge=True)
        sh("rm", "-rf", str(Path(meter.state_dir).parent), check=False)


def test_agents_report_before_any_release(fleet: PullFleet) -> None:
    """Every agent checks its (still empty) channel and reports to the pushgateway; Prometheus has them."""
    reports = fleet.wait_reports(lambda r: set(r) == set(fleet.names), 120, "three agents reporting")
    assert all(r.version is None for r in reports.values())
    assert {r.robot: r.bucket for r in reports.values()} == {n: bucket(n) for n in fleet.names}


def test_a_good_release_staged_34_then_100_reaches_every_robot_and_the_site_fetches_each_layer_once(
    fleet: PullFleet,
) -> None:
    ref = fleet.images.label("pull-good")
    fleet.release("1.0.0", ref)
    offsets: dict[str, int] = {"wave 1": sites.log_offset(fleet.meter)}

    def progress(robot: str, step: str, detail: str) -> None:
        if robot == "channel" and step.startswith("wave"):
            offsets[step] = sites.log_offset(fleet.meter)

    t0 = time.monotonic()
    res = fleet.rollout("1.0.0", progress)
    fleet.numbers["good_release_promote_to_all_s"] = round(time.monotonic() - t0, 1)
    fleet.numbers["good_release_waves"] = res.waves
    assert not res.stopped, res.stop_reason
    assert [w["percent"] for w in res.waves] == [34, 100]
    assert {r.robot: r.wave for r in res.robots} == {n: 1 if n == fleet.low else 2 for n in fleet.names}
    assert {r.robot: r.outcome for r in res.robots} == {n: "updated" for n in fleet.names}
    # each agent re-checks its service's health on every poll; under QEMU on a loaded host one poll can
    # find it slow, so the whole fleet is asked to be healthy on 1.0.0 at one moment within a while
    fleet.wait_reports(
        lambda r: len(r) == 3 and all(x.version == "1.0.0" and x.healthy for x in r.values()),
        300,
        "every robot healthy on 1.0.0",
    )

    time.sleep(2)  # the access log line follows the response
    blobs = layers_of(ref)
    whole = sites.served_blobs(fleet.meter.log, offsets["wave 1"])
    second = sites.served_blobs(fleet.meter.log, offsets["wave 2"])
    fleet.numbers["meter_served"] = {d[7:19]: (s.gets, s.bytes) for d, s in whole.items() if d in blobs}
    # Every blob of the release crossed into the site, in the first wave, for its one robot ...
    assert all(whole.get(d, sites.Served()).gets >= 1 for d in blobs), fleet.numbers["meter_served"]
    # ... and never again: the second wave's two robots were served by the site cache alone.
    assert not any(d in second for d in blobs), {d: second[d] for d in blobs if d in second}
    # One robot's pull of a cold blob costs distribution 2.8's proxy two upstream reads at most (it stores
    # one and streams one: registry/proxy/proxyblobstore.go); the count does not grow with the robots.
    assert all(whole[d].gets <= 2 for d in blobs), fleet.numbers["meter_served"]


def test_a_broken_release_at_34_is_taken_by_its_bucket_only_rolled_back_there_and_reverted(
    fleet: PullFleet,
) -> None:
    fleet.at_good()
    broken = fleet.images.crash()
    fleet.release("1.1.0", broken)
    t0 = time.monotonic()
    res = fleet.rollout("1.1.0", max_failures=0)
    fleet.numbers["broken_release_abort_s"] = round(time.monotonic() - t0, 1)
    assert res.stopped, "the rollout of a release that never turns healthy went on"
    assert res.reverted_to == "1.0.0"
    assert [w["percent"] for w in res.waves] == [34]
    why = [(r.robot, r.outcome, r.reason) for r in res.robots]
    assert {r.robot: r.outcome for r in res.robots} == {fleet.low: "rolled_back"}, (
        f"{why}\n{fleet.agent_logs(4)}"
    )
    # every robot ends on 1.0.0 and healthy: the low one rolled back on its own, the others never moved
    fleet.wait_reports(
        lambda r: len(r) == 3 and all(x.version == "1.0.0" and x.healthy for x in r.values()),
        what="every robot back on 1.0.0",
    )
    digest = broken.split("@", 1)[1]
    assert digest in fleet.images_on(fleet.low)
    for name in fleet.names:
        if name != fleet.low:
            assert digest not in fleet.images_on(name), f"{name} pulled the broken release"
    bad = Path(fleet.sim.robot(fleet.low).home) / "edge" / "bad-versions"
    assert "1.1.0" in bad.read_text().split()  # the robot never tries it again


def _refused_by_all(fleet: PullFleet, since: float) -> dict[str, Any]:
    return fleet.wait_reports(
        lambda r: (
            len(r) == 3
            and all(
                x.last_check > since and x.last_result == "refused" and x.version == "1.0.0"
                for x in r.values()
            )
        ),
        180,
        "every agent refusing the channel",
    )


def test_an_unsigned_or_re_signed_channel_is_refused_by_every_agent(fleet: PullFleet, tmp_path: Path) -> None:
    from edge_deploy.release.channel import publish_channel, push_channel_artifact
    from edge_deploy.release.signing import generate_key_pair

    good = fleet.at_good()
    ref = fleet.images.label("pull-unsigned")
    manifest = fleet.release("1.1.1", ref)
    try:
        since = time.time()
        push_channel_artifact(REPO, fleet.channel, manifest, 100)  # no signature at all
        _refused_by_all(fleet, since)
        other_key, _ = generate_key_pair(tmp_path / "other", PASSWORD)
        since = time.time()
        publish_channel(
            REPO, fleet.channel, manifest, 100, other_key, password=PASSWORD
        )  # someone else's key
        _refused_by_all(fleet, since)
    finally:  # the channel signed again, as the fleet's operator would put it back
        publish_channel(REPO, fleet.channel, good, 100, fleet.key, password=PASSWORD)
    digest = ref.split("@", 1)[1]
    for name in fleet.names:
        assert digest not in fleet.images_on(name), f"{name} pulled a release of a refused channel"


def test_a_robot_offline_during_a_release_catches_up_when_it_returns(fleet: PullFleet) -> None:
    from edge_deploy.release.channel import publish_channel
    from edge_deploy.simulation import pull

    fleet.at_good()
    away = next(n for n in fleet.names if n != fleet.low)
    pull.stop_agent(fleet.sim, fleet.sim.robot(away))
    manifest = fleet.release("1.2.0", fleet.images.label("pull-later"))
    published = time.time()
    t0 = time.monotonic()
    publish_channel(REPO, fleet.channel, manifest, 100, fleet.key, password=PASSWORD)
    online = [n for n in fleet.names if n != away]
    reports = fleet.wait_reports(
        lambda r: (
            all(r[n].version == "1.2.0" and r[n].healthy for n in online if n in r) and set(online) <= set(r)
        ),
        what="the online robots on 1.2.0",
    )
    fleet.numbers["promote_to_online_robots_s"] = round(time.monotonic() - t0, 1)
    assert reports[away].version == "1.0.0" and reports[away].last_check < published  # silent, unchanged
    t1 = time.monotonic()
    pull.start_agent(fleet.sim, fleet.sim.robot(away))
    fleet.wait_reports(
        lambda r: away in r and r[away].version == "1.2.0" and r[away].healthy,
        what=f"{away} catching up on 1.2.0",
    )
    fleet.numbers["offline_robot_catch_up_s"] = round(time.monotonic() - t1, 1)
