"""Rollouts on a simulated 3-robot fleet of real Docker engines (one dockerd + sshd per robot, arm64
containers under QEMU): 0.1.0, model-only 0.1.1/0.1.2, broken releases rolled back, rollback by pin,
and the faults of issue 7. Tests run in file order and share one fleet (bounded timeouts throughout)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.release.manifest import ReleaseManifest, save_release
from edge_runtime.errors import EdgeError
from tests.e2e.conftest import host_ready
from tests.support import need

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
REPO = f"{REGISTRY}/edge-deploy/fleet-test"
# Robots are Jetsons (arm64, under QEMU here); an amd64 runtime variant skips emulation on x86 hosts.
PLATFORM = os.environ.get("EDGE_TEST_PLATFORM", "linux/arm64")
HEALTH_TIMEOUT = 600.0  # first start builds the engine under QEMU (minutes on a loaded 2-core host)
NUMBERS: dict[str, Any] = {}


def sh(*cmd: str, timeout: float = 900, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


@pytest.fixture(scope="module")
def runtime_ref(request: pytest.FixtureRequest) -> str:
    """The runtime image pushed by the images fixtures (tests/e2e/conftest.py), or EDGE_TEST_RUNTIME_IMAGE."""
    need(os.geteuid() == 0, "root (simulated robots are users, dockerd and sshd)")
    need(host_ready(), "host Docker engine, buildx and the registry at localhost:5000 (scripts/host-setup)")
    return os.environ.get("EDGE_TEST_RUNTIME_IMAGE") or request.getfixturevalue("runtime_image").ref


def build(tag: str, dockerfile: str, files: dict[str, Path] | None = None) -> str:
    """Build a small arm64 image FROM the runtime image, push it, return repository@digest."""
    ctx = Path(tempfile.mkdtemp(prefix="edge-fleet-img-"))
    try:
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, src in (files or {}).items():
            shutil.copytree(src, ctx / name) if src.is_dir() else shutil.copy(src, ctx / name)
            os.chmod(ctx / name, 0o755)  # bundles are written private (0700); the service user must read them
        meta = ctx / "meta.json"
        sh(
            "docker",
            "buildx",
            "build",
            "--platform",
            PLATFORM,
            "--network",
            "host",
            "--provenance=false",
            "--push",
            "-t",
            f"{REPO}:{tag}",
            "--metadata-file",
            str(meta),
            str(ctx),
        )
        digest = json.loads(meta.read_text())["containerimage.digest"]
        return f"{REPO}@{digest}"
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


@dataclass
class Env:
    fleet: Path
    releases: Path
    sim: Any
    refs: dict[str, str]


def release(releases: Path, version: str, ref: str) -> None:
    save_release(ReleaseManifest.for_runtime_image(version, ref, source="test"), releases)


@pytest.fixture(scope="module")
def env(runtime_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from edge_deploy.simulation import simulate as sim

    need(sim.host_bin() is not None, "dockerd from scripts/host-setup (EDGE_HOST_BIN)")
    work = tmp_path_factory.mktemp("fleet-e2e")
    # Two model-only releases: the same runtime with a different bundle (fp16, then fp32 at opset 18).
    model = work / "policy.pt"
    sh(sys.executable, "-m", "edge_deploy", "sample-model", "-o", str(model))
    b1, b2 = work / "b1", work / "b2"
    sh(sys.executable, "-m", "edge_deploy", "convert", str(model), "-o", str(b1), "--precision", "fp16")
    sh(sys.executable, "-m", "edge_deploy", "convert", str(model), "-o", str(b2), "--opset", "18")
    base = f"FROM {runtime_ref}\n"
    refs = {
        "0.1.0": runtime_ref,
        "0.1.1": build("model-fp16", base + "COPY bundle/ /opt/edge/bundle/\n", {"bundle": b1}),
        "0.1.2": build("model-op18", base + "COPY bundle/ /opt/edge/bundle/\n", {"bundle": b2}),
        # Crashes on start; never turns healthy (the service never listens).
        "0.2.0": build("crash", base + 'ENTRYPOINT ["python3", "-c", "raise SystemExit(3)"]\n'),
        "0.2.1": build("hang", base + 'ENTRYPOINT ["python3", "-c", "import time; time.sleep(10**6)"]\n'),
    }
    # A release whose registry is down: nothing listens on this loopback port.
    refs["0.3.0"] = "127.0.0.1:5999/edge-deploy/runtime@" + runtime_ref.split("@")[1]
    releases = work / "releases"
    for version, ref in refs.items():
        release(releases, version, ref)
    try:
        with sim.simulated(
            3, "e2e", ssh_port_base=2401, service_port_base=18181, registry=REGISTRY, platform=PLATFORM
        ) as s:
            yield Env(s.fleet_file, releases, s, refs)
    finally:
        if NUMBERS:
            print("\nfleet numbers:", json.dumps(NUMBERS, indent=2))


def deploy(env: Env, version: str, **kw: Any) -> dict[str, Any]:
    """A rollout as the tests here need it; signatures are checked only where a test passes a key
    (test_unsigned_image_is_refused_before_any_robot), the others opt out as an operator would."""
    from edge_deploy.rollout import deploy_release

    kw.setdefault("health_timeout", HEALTH_TIMEOUT)
    if kw.get("public_key") is None:
        kw.setdefault("insecure_skip_signature_check", True)
    return deploy_release(version, env.fleet, releases_dir=env.releases, **kw).to_dict()


def why(summary: dict[str, Any]) -> str:
    return json.dumps(
        [{k: r[k] for k in ("robot", "outcome", "stage", "reason")} for r in summary["robots"]], indent=1
    )


def outcomes(summary: dict[str, Any]) -> dict[str, str]:
    return {r["robot"]: r["outcome"] for r in summary["robots"]}


def status(env: Env) -> dict[str, dict[str, Any]]:
    from edge_deploy.rollout import fleet_status

    return {r["robot"]: r for r in fleet_status(env.fleet)}


def content_bytes(env: Env, robot: str) -> int:
    """Bytes in the robot engine's content store (what it has pulled, compressed)."""
    data_root = Path(env.sim.robot(robot).data_root)
    blobs = data_root / "containerd" / "daemon" / "io.containerd.content.v1.content" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())


def names(env: Env) -> list[str]:
    return [r.name for r in env.sim.robots]


def infer(env: Env, robot: str) -> list[int]:
    """The action shape of one inference on the robot, with the health gate's own smoke check."""
    import httpx

    from edge_deploy.fleet.gate import ready_check, served_model, smoke_check

    async def one() -> list[int]:
        port = env.sim.robot(robot).service_port  # robots share the host's network namespace
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            outputs, _ = await smoke_check(http, served_model(await ready_check(http)))
        return list(outputs["action"]["shape"])

    return asyncio.run(one())


def test_rollout_010_to_three_robots(env: Env) -> None:
    t0 = time.monotonic()
    out = deploy(env, "0.1.0")
    NUMBERS["rollout_0.1.0_3_robots_cold_s"] = round(time.monotonic() - t0, 1)
    assert out["ok"], why(out)
    assert set(outcomes(out).values()) == {"updated"}
    for r in out["robots"]:
        assert {"connect", "upload", "pull", "engine", "up", "health"} <= set(r["timings"])
        assert r["engine"]["hit"] is False  # built on the robot before the switch
    st = status(env)
    for name in names(env):
        assert st[name]["version"] == "0.1.0" and st[name]["health"] == "healthy"
        assert st[name]["image"] == env.refs["0.1.0"]
        # the service found the engine the pre-build put into the robot's cache volume: a load, no build
        startup = st[name]["engine"]["startup"]
        assert startup["cache_hit"] is True and startup["key"] == next(
            r["engine"]["key"] for r in out["robots"] if r["robot"] == name
        )
        assert infer(env, name) == [1, 7]


def test_model_only_release_one_then_three_robots(env: Env) -> None:
    r1 = names(env)[0]
    before = {n: content_bytes(env, n) for n in names(env)}
    t0 = time.monotonic()
    one = deploy(env, "0.1.1", devices=[r1])
    NUMBERS["rollout_model_only_1_robot_s"] = round(time.monotonic() - t0, 1)
    assert one["ok"] and outcomes(one) == {r1: "updated"}, why(one)
    NUMBERS["pulled_bytes_model_only_0.1.1"] = content_bytes(env, r1) - before[r1]
    before = {n: content_bytes(env, n) for n in names(env)}
    t0 = time.monotonic()
    three = deploy(env, "0.1.2")
    NUMBERS["rollout_model_only_3_robots_s"] = round(time.monotonic() - t0, 1)
    assert three["ok"] and set(outcomes(three).values()) == {"updated"}, why(three)
    pulled = {n: content_bytes(env, n) - before[n] for n in names(env)}
    NUMBERS["pulled_bytes_model_only_0.1.2"] = pulled
    runtime_size = content_bytes(env, r1)
    NUMBERS["robot_content_store_bytes"] = runtime_size
    for n in names(env):
        assert 0 < pulled[n] < runtime_size / 4, (
            n,
            pulled[n],
            runtime_size,
        )  # one small layer, not the image
    st = status(env)
    assert {st[n]["version"] for n in names(env)} == {"0.1.2"}
    assert st[r1]["previous"] == "0.1.1" and st[names(env)[1]]["previous"] == "0.1.0"


def test_rollback_by_pin_needs_no_download(env: Env) -> None:
    from edge_deploy.rollout import rollback

    r2 = names(env)[1]
    before = content_bytes(env, r2)
    t0 = time.monotonic()
    res = rollback(env.fleet, to="0.1.0", devices=[r2], health_timeout=HEALTH_TIMEOUT)
    NUMBERS["rollback_one_robot_s"] = round(time.monotonic() - t0, 1)
    assert [r.outcome for r in res] == ["updated"], res
    assert content_bytes(env, r2) == before  # nothing was pulled
    assert status(env)[r2]["version"] == "0.1.0" and infer(env, r2) == [1, 7]
    # Forward again: 0.1.2 is still kept on the robot, so this is a switch, not a download.
    out = deploy(env, "0.1.2", devices=[r2])
    assert out["ok"] and content_bytes(env, r2) == before


def test_crash_on_start_in_canary_rolls_back_and_stops_the_fleet(env: Env) -> None:
    r1, r2, r3 = names(env)
    out = deploy(env, "0.2.0", canary=1, health_timeout=90)
    assert outcomes(out) == {r1: "rolled_back", r2: "not_reached", r3: "not_reached"}, why(out)
    assert out["stopped"] and "canary" in out["stop_reason"]
    st = status(env)
    assert all(st[n]["version"] == "0.1.2" and st[n]["health"] == "healthy" for n in names(env))
    assert "0.2.0" in st[r1]["bad_versions"] and not st[r2]["bad_versions"]
    assert infer(env, r1) == [1, 7]
    # Marked bad on that robot: the next attempt skips it with a reason.
    again = deploy(env, "0.2.0", devices=[r1])
    assert outcomes(again) == {r1: "skipped"} and "bad" in again["robots"][0]["reason"]
    # Its release is still kept there: a rollback to it by pin fails, and the robot goes back to 0.1.2.
    from edge_deploy.rollout import rollback

    res = rollback(env.fleet, to="0.2.0", devices=[r1], health_timeout=90)
    assert [r.outcome for r in res] == ["failed"] and "0.1.2 restored" in res[0].reason, res
    st = status(env)[r1]
    assert st["version"] == "0.1.2" and st["health"] == "healthy"
    assert infer(env, r1) == [1, 7]


def test_never_healthy_rolls_back(env: Env) -> None:
    r3 = names(env)[2]
    t0 = time.monotonic()
    out = deploy(env, "0.2.1", devices=[r3], health_timeout=45)
    NUMBERS["never_healthy_to_restored_s"] = round(time.monotonic() - t0, 1)
    assert outcomes(out) == {r3: "rolled_back"}, why(out)
    assert "rollback" in out["robots"][0]["timings"]
    NUMBERS["automatic_rollback_s"] = out["robots"][0]["timings"]["rollback"]
    st = status(env)[r3]
    assert st["version"] == "0.1.2" and st["health"] == "healthy"


def test_registry_down_robot_stays_on_its_release(env: Env) -> None:
    out = deploy(env, "0.3.0", max_failures=3)
    assert set(outcomes(out).values()) == {"failed"}
    assert all(r["stage"] == "pull" and "stays on 0.1.2" in r["reason"] for r in out["robots"])
    st = status(env)
    assert all(st[n]["version"] == "0.1.2" and st[n]["health"] == "healthy" for n in names(env))


def test_robot_offline_mid_rollout_is_reported(env: Env) -> None:
    from edge_deploy.simulation import simulate as sim

    r1, r2, r3 = names(env)
    robot3 = env.sim.robot(r3)
    sim.stop_sshd(env.sim, robot3)
    try:
        out = deploy(env, "0.1.1", wave_size=1, max_failures=1)
    finally:
        sim.start_sshd(env.sim, robot3)
    assert outcomes(out) == {r1: "updated", r2: "updated", r3: "unreachable"}, why(out)
    assert not out["stopped"] and out["failures"] == 1 and not out["ok"]
    assert status(env)[r3]["version"] == "0.1.2"  # untouched, still serving


def test_tool_killed_mid_rollout_rerun_converges(env: Env) -> None:
    cmd = [
        sys.executable,
        "-m",
        "edge_deploy",
        "rollout",
        "0.1.0",
        "--fleet",
        str(env.fleet),
        "--releases-dir",
        str(env.releases),
        "--health-timeout",
        str(HEALTH_TIMEOUT),
        "--insecure-skip-signature-check",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_files = [Path(r.home) / "edge" / "state.json" for r in env.sim.robots]
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill once some robot has switched but is not yet gated
            if any(p.is_file() and '"switching"' in p.read_text() for p in state_files):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    out = deploy(env, "0.1.0")
    assert out["ok"], why(out)
    assert set(outcomes(out).values()) <= {"updated", "unchanged"}
    st = status(env)
    assert all(st[n]["version"] == "0.1.0" and st[n]["health"] == "healthy" for n in names(env))


def test_same_release_is_unchanged_but_a_re_released_version_is_an_update(env: Env, tmp_path: Path) -> None:
    """Outcome "unchanged" only when the robot already runs this version with this image: a version
    released again (--force) with another digest is an update, and the robot runs the new digest."""
    from edge_deploy.rollout import deploy_release

    robot = names(env)[0]
    out = deploy(env, "0.1.0", devices=[robot])
    assert outcomes(out) == {robot: "unchanged"}, why(out)
    again = tmp_path / "releases"
    release(again, "0.1.0", env.refs["0.1.1"])  # 0.1.0 re-released with the model-only image
    out = deploy_release(
        "0.1.0",
        env.fleet,
        releases_dir=again,
        devices=[robot],
        health_timeout=HEALTH_TIMEOUT,
        insecure_skip_signature_check=True,
    ).to_dict()
    assert outcomes(out) == {robot: "updated"}, why(out)
    assert status(env)[robot]["image"] == env.refs["0.1.1"]
    out = deploy(env, "0.1.0", devices=[robot])  # and back to the original 0.1.0
    assert outcomes(out) == {robot: "updated"} and status(env)[robot]["image"] == env.refs["0.1.0"], why(out)


def test_unsigned_image_is_refused_before_any_robot(env: Env, tmp_path: Path) -> None:
    from edge_deploy.simulation.simulate import host_bin

    cosign = shutil.which("cosign") or str((host_bin() or Path("/nonexistent")) / "cosign")
    need(Path(cosign).is_file(), "cosign (scripts/host-setup)")
    envv = {**os.environ, "COSIGN_PASSWORD": ""}
    sh(cosign, "generate-key-pair", cwd=tmp_path, env=envv)
    sh(
        cosign,
        "sign",
        "--yes",
        "--key",
        str(tmp_path / "cosign.key"),
        "--tlog-upload=false",
        "--allow-insecure-registry",
        env.refs["0.1.2"],
        env=envv,
    )
    before = status(env)
    with pytest.raises(EdgeError, match="signature"):  # the release tool's SigningError
        deploy(env, "0.1.1", public_key=tmp_path / "cosign.pub")  # 0.1.1's digest was never signed
    with pytest.raises(EdgeError, match="no public key is configured"):  # the default: no key, no rollout
        deploy(env, "0.1.2", insecure_skip_signature_check=False)
    assert {n: s["version"] for n, s in status(env).items()} == {n: s["version"] for n, s in before.items()}
    out = deploy(env, "0.1.2", public_key=tmp_path / "cosign.pub", devices=[names(env)[0]])
    assert out["ok"] and out["signature"] == f"verified with {tmp_path / 'cosign.pub'}", why(out)
