"""Rollouts on a simulated 3-robot fleet of real Docker engines (one dockerd + sshd per robot, arm64
containers under QEMU): the base release 0.1.0 to fresh robots, model-only releases, broken releases
rolled back, rollback by pin, a robot offline, the tool killed mid-rollout, signatures. Each test brings
the robots it uses to the release it starts from and registers the releases it needs
(tests/e2e/fleet_fixtures.py), so any one of them runs alone; timings are printed at the end (``-s``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.errors import EdgeError
from tests.e2e.fleet_fixtures import (
    HEALTH_TIMEOUT,
    FleetImages,
    SimFleet,
    outcomes,
    rollout,
    sh,
    sim_fleet,
    why,
)
from tests.support import need

# A test run alone pays for the session's images and its fleet's first rollout (QEMU) as well.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

BASE = "0.1.0"  # the runtime image as built, on every robot after the fleet's first rollout


@pytest.fixture(scope="module")
def fleet(
    fleet_images: FleetImages, runtime_ref: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimFleet]:
    work = tmp_path_factory.mktemp("fleet-e2e")
    with sim_fleet(
        fleet_images,
        work,
        3,
        "e2e",
        base=BASE,
        base_ref=runtime_ref,
        title="fleet",
        ssh_port_base=2401,
        service_port_base=18181,
    ) as f:
        yield f


def content_bytes(fleet: SimFleet, robot: str) -> int:
    """Bytes in the robot engine's content store (what it has pulled, compressed)."""
    data_root = Path(fleet.robot(robot).data_root)
    blobs = data_root / "containerd" / "daemon" / "io.containerd.content.v1.content" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())


def test_rollout_010_to_three_robots(fleet: SimFleet) -> None:
    out = fleet.first_rollout()  # fresh robots: the whole image, and the engine built on each robot
    assert set(outcomes(out).values()) == {"updated"}, why(out)
    for r in out["robots"]:
        assert {"connect", "upload", "pull", "engine", "up", "health"} <= set(r["timings"])
        assert r["engine"]["hit"] is False  # built on the robot before the switch
    fleet.at_base()
    st = fleet.status()
    for name in fleet.names:
        assert st[name]["version"] == BASE and st[name]["health"] == "healthy"
        assert st[name]["image"] == fleet.base_ref
        # the service found the engine the pre-build put into the robot's cache volume: a load, no build
        startup = st[name]["engine"]["startup"]
        assert startup["cache_hit"] is True and startup["key"] == next(
            r["engine"]["key"] for r in out["robots"] if r["robot"] == name
        )
        assert fleet.infer(name) == [1, 7]


def test_crash_on_start_in_canary_rolls_back_and_stops_the_fleet(fleet: SimFleet) -> None:
    r1, r2, r3 = fleet.names
    fleet.at_base()
    fleet.release("0.2.0", fleet.images.crash())
    out = fleet.deploy("0.2.0", canary=1, health_timeout_s=90)
    assert outcomes(out) == {r1: "rolled_back", r2: "not_reached", r3: "not_reached"}, why(out)
    assert out["stopped"] and "canary" in out["stop_reason"]
    st = fleet.status()
    assert all(st[n]["version"] == BASE and st[n]["health"] == "healthy" for n in fleet.names)
    assert "0.2.0" in st[r1]["bad_versions"] and "0.2.0" not in st[r2]["bad_versions"]
    assert fleet.infer(r1) == [1, 7]
    # Marked bad on that robot: the next attempt skips it with a reason.
    again = fleet.deploy("0.2.0", devices=[r1])
    assert outcomes(again) == {r1: "skipped"} and "bad" in again["robots"][0]["reason"]
    # Its release is still kept there: a rollback to it by pin fails, and the robot goes back to the base.
    from edge_deploy.fleet import RollbackOptions, rollback

    res = rollback(fleet.fleet, RollbackOptions(to="0.2.0", devices=(r1,), health_timeout_s=90))
    assert [r.outcome for r in res] == ["failed"] and f"{BASE} restored" in res[0].reason, res
    st1 = fleet.status()[r1]
    assert st1["version"] == BASE and st1["health"] == "healthy"
    assert fleet.infer(r1) == [1, 7]


def test_never_healthy_rolls_back(fleet: SimFleet) -> None:
    r3 = fleet.names[2]
    fleet.at_base([r3])
    fleet.release("0.2.1", fleet.images.hang())
    t0 = time.monotonic()
    out = fleet.deploy("0.2.1", devices=[r3], health_timeout_s=45)
    fleet.numbers["never_healthy_to_restored_s"] = round(time.monotonic() - t0, 1)
    assert outcomes(out) == {r3: "rolled_back"}, why(out)
    assert "rollback" in out["robots"][0]["timings"]
    fleet.numbers["automatic_rollback_s"] = out["robots"][0]["timings"]["rollback"]
    st = fleet.status()[r3]
    assert st["version"] == BASE and st["health"] == "healthy"


def test_registry_down_robot_stays_on_its_release(fleet: SimFleet) -> None:
    fleet.at_base()
    # The runtime's digest in a registry that is down: nothing listens on this loopback port.
    fleet.release("0.3.0", "127.0.0.1:5999/edge-deploy/runtime@" + fleet.base_ref.split("@")[1])
    out = fleet.deploy("0.3.0", max_failures=3)
    assert set(outcomes(out).values()) == {"failed"}, why(out)
    assert all(r["stage"] == "pull" and f"stays on {BASE}" in r["reason"] for r in out["robots"]), why(out)
    st = fleet.status()
    assert all(st[n]["version"] == BASE and st[n]["health"] == "healthy" for n in fleet.names)


def test_same_release_is_unchanged_but_a_re_released_version_is_an_update(
    fleet: SimFleet, tmp_path: Path
) -> None:
    """Outcome "unchanged" only when the robot already runs this version with this image: a version
    released again (--force) with another digest is an update, and the robot runs the new digest."""
    from edge_deploy.release.manifest import ReleaseManifest, save_release

    robot = fleet.names[0]
    fleet.at_base([robot])
    out = fleet.deploy(BASE, devices=[robot])
    assert outcomes(out) == {robot: "unchanged"}, why(out)
    again = tmp_path / "releases"
    other = fleet.images.label("a")
    save_release(ReleaseManifest.for_runtime_image(BASE, other, "test"), again)  # re-released, new digest
    out = rollout(fleet.fleet, BASE, again, devices=[robot])
    assert outcomes(out) == {robot: "updated"}, why(out)
    assert fleet.status()[robot]["image"] == other
    out = fleet.deploy(BASE, devices=[robot])  # and back to the original release
    assert outcomes(out) == {robot: "updated"}, why(out)
    assert fleet.status()[robot]["image"] == fleet.base_ref


def test_robot_offline_mid_rollout_is_reported(fleet: SimFleet) -> None:
    from edge_deploy.simulation import simulate as sim

    r1, r2, r3 = fleet.names
    was = fleet.serving()
    fleet.release("0.5.0", fleet.images.label("b"))
    robot3 = fleet.robot(r3)
    sim.stop_sshd(fleet.sim, robot3)
    try:
        out = fleet.deploy("0.5.0", wave_size=1, max_failures=1)
    finally:
        sim.start_sshd(fleet.sim, robot3)
    assert outcomes(out) == {r1: "updated", r2: "updated", r3: "unreachable"}, why(out)
    assert not out["stopped"] and out["failures"] == 1 and not out["ok"]
    st = fleet.status()[r3]
    assert (st["version"], st["health"]) == (was[r3], "healthy")  # untouched, still serving


def test_tool_killed_mid_rollout_rerun_converges(fleet: SimFleet) -> None:
    fleet.serving()
    fleet.release("0.6.0", fleet.images.label("a"))
    cmd = [
        sys.executable,
        "-m",
        "edge_deploy",
        "fleet",
        "rollout",
        "0.6.0",
        "--fleet",
        str(fleet.fleet),
        "--releases-dir",
        str(fleet.releases),
        "--health-timeout",
        str(HEALTH_TIMEOUT),
        "--insecure-skip-signature-check",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_files = [fleet.home(n) / "state.json" for n in fleet.names]
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill once some robot has switched but is not yet gated
            if any(p.is_file() and '"switching"' in p.read_text() for p in state_files):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    out = fleet.deploy("0.6.0")
    assert out["ok"], why(out)
    assert set(outcomes(out).values()) <= {"updated", "unchanged"}, why(out)
    st = fleet.status()
    assert all(st[n]["version"] == "0.6.0" and st[n]["health"] == "healthy" for n in fleet.names)


def test_model_only_release_one_then_three_robots(fleet: SimFleet) -> None:
    """Releases that change only the model (the same runtime with another bundle: fp16, then fp32 at
    opset 18): a robot pulls one small layer, not the image."""
    r1 = fleet.names[0]
    was = fleet.serving()
    work = fleet.releases.parent / "model-only"
    work.mkdir(exist_ok=True)
    model = work / "policy.pt"
    sh(sys.executable, "-m", "edge_deploy", "sample-model", "-o", str(model))
    b1, b2 = work / "b1", work / "b2"
    sh(sys.executable, "-m", "edge_deploy", "convert", str(model), "-o", str(b1), "--precision", "fp16")
    sh(sys.executable, "-m", "edge_deploy", "convert", str(model), "-o", str(b2), "--opset", "18")
    copy = "COPY bundle/ /opt/edge/bundle/\n"
    fleet.release("0.1.1", fleet.images.image("model-fp16", copy, {"bundle": b1}))
    fleet.release("0.1.2", fleet.images.image("model-op18", copy, {"bundle": b2}))
    before = {n: content_bytes(fleet, n) for n in fleet.names}
    t0 = time.monotonic()
    one = fleet.deploy("0.1.1", devices=[r1])
    fleet.numbers["rollout_model_only_1_robot_s"] = round(time.monotonic() - t0, 1)
    assert one["ok"] and outcomes(one) == {r1: "updated"}, why(one)
    fleet.numbers["pulled_bytes_model_only_0.1.1"] = content_bytes(fleet, r1) - before[r1]
    before = {n: content_bytes(fleet, n) for n in fleet.names}
    t0 = time.monotonic()
    three = fleet.deploy("0.1.2")
    fleet.numbers["rollout_model_only_3_robots_s"] = round(time.monotonic() - t0, 1)
    assert three["ok"] and set(outcomes(three).values()) == {"updated"}, why(three)
    pulled = {n: content_bytes(fleet, n) - before[n] for n in fleet.names}
    fleet.numbers["pulled_bytes_model_only_0.1.2"] = pulled
    runtime_size = content_bytes(fleet, r1)
    fleet.numbers["robot_content_store_bytes"] = runtime_size
    for n in fleet.names:
        assert 0 < pulled[n] < runtime_size / 4, (n, pulled[n], runtime_size)  # one small layer
    st = fleet.status()
    assert {st[n]["version"] for n in fleet.names} == {"0.1.2"}
    assert st[r1]["previous"] == "0.1.1"
    assert all(st[n]["previous"] == was[n] for n in fleet.names[1:])
    assert fleet.infer(r1) == [1, 7]


def test_rollback_by_pin_needs_no_download(fleet: SimFleet) -> None:
    """Back to the previous release kept on the robot, then forward again: switches, no download."""
    from edge_deploy.fleet import RollbackOptions, rollback

    r2 = fleet.names[1]
    fleet.serving([r2])
    if fleet.status()[r2]["previous"] is None:  # a fresh fleet: one more release to go back from
        fleet.release("0.4.0", fleet.images.label("a"))
        out = fleet.deploy("0.4.0", devices=[r2])
        assert outcomes(out) == {r2: "updated"}, why(out)
    st = fleet.status()[r2]
    current, previous = str(st["version"]), str(st["previous"])
    before = content_bytes(fleet, r2)
    t0 = time.monotonic()
    res = rollback(fleet.fleet, RollbackOptions(to=previous, devices=(r2,), health_timeout_s=HEALTH_TIMEOUT))
    fleet.numbers["rollback_one_robot_s"] = round(time.monotonic() - t0, 1)
    assert [r.outcome for r in res] == ["updated"], res
    assert content_bytes(fleet, r2) == before  # nothing was pulled
    assert fleet.status()[r2]["version"] == previous and fleet.infer(r2) == [1, 7]
    # Forward again: the release it left is still kept on the robot, so this is a switch, not a download.
    out = fleet.deploy(current, devices=[r2])
    assert out["ok"] and content_bytes(fleet, r2) == before, why(out)


def test_unsigned_image_is_refused_before_any_robot(fleet: SimFleet, tmp_path: Path) -> None:
    from edge_deploy.simulation.simulate import host_bin

    cosign = shutil.which("cosign") or str((host_bin() or Path("/nonexistent")) / "cosign")
    need(Path(cosign).is_file(), "cosign (scripts/host-setup)")
    r1 = fleet.names[0]
    fleet.serving([r1])
    signed = fleet.release("0.7.0", fleet.images.label("signed"))
    unsigned = fleet.release("0.7.1", fleet.images.label("b"))  # never signed
    envv = {**os.environ, "COSIGN_PASSWORD": ""}
    sh(cosign, "generate-key-pair", cwd=tmp_path, env=envv)
    key, pub = tmp_path / "cosign.key", tmp_path / "cosign.pub"
    ref = fleet.images.label("signed")
    sh(
        cosign,
        "sign",
        "--yes",
        "--key",
        str(key),
        "--tlog-upload=false",
        "--allow-insecure-registry",
        ref,
        env=envv,
    )
    before = {n: s["version"] for n, s in fleet.status().items()}
    with pytest.raises(EdgeError, match="signature"):  # the release tool's SigningError
        fleet.deploy(unsigned, public_key=pub)  # its digest was never signed
    with pytest.raises(EdgeError, match="no public key is configured"):  # the default: no key, no rollout
        fleet.deploy(signed, insecure_skip_signature_check=False)
    assert {n: s["version"] for n, s in fleet.status().items()} == before
    out = fleet.deploy(signed, public_key=pub, devices=[r1])
    assert out["ok"] and out["signature"] == f"verified with {pub}", why(out)
