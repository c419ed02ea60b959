"""A simulated robot marked ``gpu: true`` (real dockerd + sshd, arm64 under QEMU): its service runs with
compose.jetson.yaml on the engine's ``nvidia`` runtime (the simulator's stand-in: plain runc, no GPU), so
``auto`` falls back to ONNX Runtime on the CPU. A release that allows that on purpose goes on; one that does
not is refused by the health gate, which names both backends and the service's own reason, and the robot
rolls back to its previous release; the inventory's ``allow_cpu_fallback`` lets it through. Each test
brings the robot to the release it starts from (tests/e2e/fleet_fixtures.py), so any one runs alone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.fleet_fixtures import FleetImages, SimFleet, sim_fleet, why

# A test run alone pays for the session's images and its fleet's first rollout (QEMU) as well.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

ALLOWED, NOT_SAID = "1.0.0", "1.0.1"  # the same runtime image; 1.0.0 accepts ONNX Runtime on the CPU


@pytest.fixture(scope="module")
def gpu_robot(
    fleet_images: FleetImages, runtime_ref: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimFleet]:
    """One ``gpu: true`` robot; its first rollout puts 1.0.0 on it."""
    work = tmp_path_factory.mktemp("fleet-gpu")
    with sim_fleet(
        fleet_images,
        work,
        1,
        "gpu",
        base=ALLOWED,
        base_ref=runtime_ref,
        title="fleet gpu-gate",
        ssh_port_base=2481,
        service_port_base=18261,
        gpu=True,
    ) as f:
        f.release(ALLOWED, runtime_ref, required_backend="any")
        f.release(NOT_SAID, runtime_ref)
        yield f


def deploy(f: SimFleet, version: str, what: str, **kw: Any) -> dict[str, Any]:
    """Roll ``version`` out; its wall time goes into the numbers as ``what``."""
    t0 = time.monotonic()
    out = f.deploy(version, **kw)
    f.numbers[what] = round(time.monotonic() - t0, 1)
    return out


def only(summary: dict[str, Any]) -> dict[str, Any]:
    (robot,) = summary["robots"]
    return dict(robot)


def status(f: SimFleet) -> dict[str, Any]:
    return f.status()[f.names[0]]


def served(f: SimFleet, path: str) -> str:
    """GET a path of the robot's service (robots share the host's network namespace here)."""
    import httpx

    return httpx.get(f"http://127.0.0.1:{f.robot().service_port}{path}", timeout=30).text


def test_simulated_robot_is_gpu_and_runs_the_jetson_compose_file(gpu_robot: SimFleet) -> None:
    (robot,) = yaml.safe_load(gpu_robot.fleet.read_text())["robots"]
    assert (robot["gpu"], robot["allow_cpu_fallback"]) == (True, False)
    runtimes = json.loads(gpu_robot.docker(None, "info", "--format", "{{json .Runtimes}}"))
    assert "nvidia" in runtimes  # the stand-in the simulator registers


def test_a_release_that_allows_the_cpu_on_purpose_goes_on(gpu_robot: SimFleet) -> None:
    out = gpu_robot.first_rollout()  # a fresh robot: the whole image, the engine built before the switch
    assert out["ok"] and only(out)["outcome"] == "updated", why(out)
    gpu_robot.at_base()
    st = status(gpu_robot)
    assert (st["version"], st["health"]) == (ALLOWED, "healthy")
    ready = st["engine"]
    assert (ready["backend"], ready["backend_requested"]) == ("onnxruntime", "auto") and ready["fallback"]
    # compose.jetson.yaml applied for real: the container runs on the engine's nvidia runtime.
    cid = gpu_robot.docker(
        None, "ps", "-q", "--filter", "label=com.docker.compose.service=edge-runtime"
    ).split()[0]
    inspect = json.loads(gpu_robot.docker(None, "inspect", cid))[0]
    assert inspect["HostConfig"]["Runtime"] == "nvidia"
    assert "NVIDIA_VISIBLE_DEVICES=all" in inspect["Config"]["Env"]
    # The service says why in its log and its metrics too.
    log = gpu_robot.docker(None, "logs", cid)
    assert (
        f"backend auto fell back to onnxruntime on the CPU, TensorRT is not used: {ready['fallback']}" in log
    )
    from prometheus_client.parser import text_string_to_metric_families

    from edge_runtime.service import REASON_LABEL_CHARS

    info = [
        dict(s.labels)
        for f in text_string_to_metric_families(served(gpu_robot, "/metrics"))
        for s in f.samples
        if s.name == "edge_backend_info"
    ]
    assert [{k: v for k, v in i.items() if k != "reason"} for i in info] == [
        {"backend": "onnxruntime", "requested": "auto", "fallback": "true"}
    ]
    reason = info[0]["reason"]  # the sentence, cut to a bounded label length
    assert reason and ready["fallback"].startswith(reason) and len(reason) <= REASON_LABEL_CHARS


def test_a_cpu_fallback_fails_the_gate_and_the_robot_rolls_back(gpu_robot: SimFleet) -> None:
    gpu_robot.at_base()
    said = status(gpu_robot)["engine"]["fallback"]  # the service's own sentence, from its /readyz
    out = deploy(gpu_robot, NOT_SAID, "rollout_1.0.1_refused_and_rolled_back_s")
    r = only(out)
    gpu_robot.numbers["automatic_rollback_s"] = r["timings"].get("rollback")
    gpu_robot.numbers["gate_reason"] = r["reason"]
    assert not out["ok"] and (r["outcome"], r["stage"]) == ("rolled_back", "health"), why(out)
    assert r["reason"].startswith(
        "expected backend tensorrt (the robot has gpu: true in fleet.yaml), served onnxruntime on the CPU: "
        f"the service says: {said.rstrip('.')}; "
    ), r["reason"]
    assert r["reason"].endswith(f"; restored {ALLOWED}")
    st = status(gpu_robot)
    assert (st["version"], st["health"], st["bad_versions"]) == (ALLOWED, "healthy", [NOT_SAID])
    assert st["engine"]["ready"] is True


def test_allow_cpu_fallback_in_the_inventory_lets_it_through(gpu_robot: SimFleet) -> None:
    gpu_robot.at_base()
    inventory = gpu_robot.fleet.read_text()
    doc = yaml.safe_load(inventory)
    doc["robots"][0]["allow_cpu_fallback"] = True
    gpu_robot.fleet.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:  # forced: the release may be marked bad here by the test above
        out = deploy(gpu_robot, NOT_SAID, "rollout_1.0.1_cpu_allowed_by_inventory_s", force=True)
    finally:
        gpu_robot.fleet.write_text(inventory)
    assert out["ok"] and only(out)["outcome"] == "updated", why(out)
    st = status(gpu_robot)
    assert (st["version"], st["health"], st["engine"]["backend"]) == (NOT_SAID, "healthy", "onnxruntime")
