"""ROS 2 in the released arm64 runtime image, under QEMU: Cyclone DDS 0.10 and its Python binding compiled
in the image's ``ros2`` stage (no compiler left in the image), the manifest recording ROS 2 support, a
simulated robot rolled out with ROS 2 whose gate includes a DDS round trip (the bridge's probe), and the host's
ROS-2-conventions peer (tests/runtime/ros2_peer.py) exchanging camera, state and action messages with the
container across the container boundary (host networking, DDS on loopback only: the simulated robot's
CYCLONEDDS_URI and the tests' are the same loopback settings). Sizes and times are printed (``-s``)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import BuiltImages
from tests.e2e.fleet_fixtures import FleetImages, SimFleet, sh, sim_fleet, why
from tests.runtime.ros2_support import expected_feeds, finish_peer, random_domain, start_peer

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3000)]

VERSION = "0.7.0"  # the fleet of this file has its own releases directory
NUMBERS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def fleet(
    fleet_images: FleetImages, runtime_ref: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimFleet]:
    work = tmp_path_factory.mktemp("ros2-e2e")
    with sim_fleet(
        fleet_images,
        work,
        1,
        "ros2",
        base=VERSION,
        base_ref=runtime_ref,
        title="ros2",
        ssh_port_base=2531,
        service_port_base=18331,
    ) as f:
        yield f
    print("\nros2 e2e numbers:", json.dumps(NUMBERS, indent=2))


def in_image(ref: str, script: str) -> str:
    p = sh(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--platform",
        "linux/arm64",
        "--entrypoint",
        "sh",
        ref,
        "-c",
        script,
    )
    return p.stdout


def test_image_carries_cyclonedds_010_without_a_compiler(built_images: BuiltImages) -> None:
    assert built_images.result.ros2 is True  # what the release records (manifest.ros2)
    ref = built_images.runtime.ref
    out = in_image(
        ref,
        "python3 -c 'import importlib.metadata as m, cyclonedds.domain; print(m.version(\"cyclonedds\"))'; "
        "for c in gcc cc c++ aarch64-linux-gnu-gcc-12 ld; do command -v $c; done; ls /usr/include/dds 2>&1 | head -n1; "
        "du -sk /opt/edge/venv/lib/python3*/site-packages/cyclonedds /usr/lib/aarch64-linux-gnu/libddsc.so.0.* "
        "/usr/lib/aarch64-linux-gnu/libiceoryx_*.so.2.*",
    )
    lines = out.splitlines()
    assert lines[0] == "0.10.5", out  # the binding the ros2 stage built, importable with its C library
    compilers = [x for x in lines if re.search(r"/(gcc|cc|c\+\+|ld|aarch64-linux-gnu-gcc-12)$", x)]
    assert compilers == [], out  # the compilers stayed in the ros2 stage
    assert "No such file" in out  # no Cyclone DDS headers either
    kb = sum(int(line.split()[0]) for line in lines if re.match(r"^\d+\s+/", line))
    NUMBERS["ros2_unpacked_kb"] = kb
    assert 0 < kb < 10_000, out


def test_rollout_with_ros2_passes_a_dds_gate_and_serves_the_host_peer(
    fleet: SimFleet, built_images: BuiltImages, runtime_ref: str, tmp_path: Path
) -> None:
    from edge_deploy.release.manifest import ReleaseManifest, load_release, save_release

    if not (fleet.releases / f"{VERSION}.json").is_file():
        manifest = ReleaseManifest.for_runtime_image(VERSION, runtime_ref, "test")
        manifest.ros2 = True  # as a release of this image records it (built_images.result.ros2)
        save_release(manifest, fleet.releases)
    assert load_release(VERSION, fleet.releases).ros2 is True
    domain = random_domain()
    t0 = time.monotonic()
    out = fleet.deploy(VERSION, include_ros2=True, ros_domain_id=domain)
    NUMBERS["rollout_ros2_s"] = round(time.monotonic() - t0, 1)
    assert out["ok"], why(out)

    robot = fleet.robot()
    cid = fleet.docker(None, "ps", "-q", "--filter", "label=com.docker.compose.project=edge").split()[0]
    env = fleet.docker(None, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", cid)
    assert f"ROS_DOMAIN_ID={domain}" in env and "EDGE_ROS2=1" in env
    assert (
        "CYCLONEDDS_URI=<CycloneDDS>" in env
    )  # the robot's loopback-only DDS settings reached the container
    # the gate's DDS round trip: the bridge answered the probe (and published no action for it)
    with urllib.request.urlopen(f"http://127.0.0.1:{robot.service_port}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert re.search(r"^edge_ros2_probes_total 1\.0$", metrics, re.M), metrics[-2000:]
    assert re.search(r"^edge_ros2_actions_total 0\.0$", metrics, re.M)
    # the same probe by hand, as an operator would run it on the robot
    probe = json.loads(
        fleet.docker(None, "exec", cid, "python3", "-m", "edge_runtime.ros2.probe").splitlines()[-1]
    )
    assert probe["ok"] and probe["cyclonedds"] == "0.10.5" and probe["action_size"] == 7, probe
    NUMBERS["probe_round_trip_ms_under_qemu"] = probe["round_trip_ms"]

    # the host's ROS 2 peer ↔ the bridge in the arm64 container (QEMU: generous timeouts)
    npz = tmp_path / "peer.npz"
    t0 = time.monotonic()
    err = finish_peer(
        start_peer(
            domain, npz, "--rounds", "3", "--gap", "1", "--action-timeout", "60", "--match-timeout", "120"
        ),
        timeout_s=900,
    )
    NUMBERS["peer_3_rounds_s"] = round(time.monotonic() - t0, 1)
    assert npz.exists(), err
    got = np.load(npz)
    assert len(got["actions"]) == 3, err
    NUMBERS["peer_rtt_ms_under_qemu"] = [round(float(x) * 1000, 1) for x in got["rtt_s"]]

    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle

    bundle = ModelBundle.load(built_images.bundle_dir)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch)
    engine = backend.load(backend.build(bundle, options), bundle, options)
    for image, state, action in zip(got["images"], got["states"], got["actions"], strict=True):
        expected = engine.infer(expected_feeds(image, state))["action"][0]
        # the same fp16 bundle by onnxruntime on arm64 (in the container, fp16 kernels) and on this host
        # (x86_64): they differ by up to ~1.3e-3 (seen), within fp16's precision for values near 1
        np.testing.assert_allclose(action, expected, rtol=0, atol=5e-3)
    engine.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{robot.service_port}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert re.search(r"^edge_ros2_actions_total [3-9]\.0$", metrics, re.M)
