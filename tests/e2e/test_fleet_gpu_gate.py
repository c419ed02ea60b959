"""A simulated robot marked ``gpu: true`` (real dockerd + sshd, arm64 under QEMU): its service runs with
compose.jetson.yaml on the engine's ``nvidia`` runtime (the simulator's stand-in: plain runc, no GPU), so
``auto`` falls back to ONNX Runtime on the CPU. A release that allows that on purpose goes on; one that does
not is refused by the health gate, which names both backends and the service's own reason, and the robot
rolls back to its previous release; the inventory's ``allow_cpu_fallback`` lets it through."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_deploy.release.manifest import ReleaseManifest, save_release
from tests.e2e.test_fleet_docker import PLATFORM, REGISTRY, runtime_ref
from tests.support import need

pytestmark = [pytest.mark.docker, pytest.mark.slow]

__all__ = ["runtime_ref"]  # the shared fixture: the runtime image the images fixtures pushed

HEALTH_TIMEOUT = 600.0  # the first start builds the engine under QEMU
NUMBERS: dict[str, Any] = {}


@dataclass
class GpuRobot:
    fleet: Path
    releases: Path
    sim: Any

    @property
    def robot(self) -> Any:
        return self.sim.robots[0]

    def docker(self, *args: str) -> str:
        """``docker`` on the robot's own engine."""
        p = subprocess.run(
            ["docker", "-H", f"unix://{self.robot.socket}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr


@pytest.fixture(scope="module")
def gpu_robot(runtime_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuRobot]:
    from edge_deploy.simulation import simulate as sim

    need(sim.host_bin() is not None, "dockerd from scripts/host-setup (EDGE_HOST_BIN)")
    work = tmp_path_factory.mktemp("fleet-gpu")
    releases = work / "releases"
    # The same runtime image twice: 1.0.0 accepts ONNX Runtime on the CPU on purpose, 1.0.1 does not say.
    save_release(
        ReleaseManifest.for_runtime_image("1.0.0", runtime_ref, "test", required_backend="any"), releases
    )
    save_release(ReleaseManifest.for_runtime_image("1.0.1", runtime_ref, "test"), releases)
    try:
        with sim.simulated(
            1,
            "gpu",
            ssh_port_base=2461,
            service_port_base=18261,
            registry=REGISTRY,
            platform=PLATFORM,
            gpu=True,
        ) as s:
            yield GpuRobot(s.fleet_file, releases, s)
    finally:
        if NUMBERS:
            print("\nfleet gpu-gate numbers:", json.dumps(NUMBERS, indent=2))


def deploy(env: GpuRobot, version: str, what: str, **kw: Any) -> dict[str, Any]:
    """Roll ``version`` out; its wall time goes into NUMBERS as ``what``."""
    from edge_deploy.rollout import deploy_release

    t0 = time.monotonic()
    kw.setdefault("insecure_skip_signature_check", True)  # signatures: test_fleet_docker.py
    out = deploy_release(
        version, env.fleet, releases_dir=env.releases, health_timeout=HEALTH_TIMEOUT, **kw
    ).to_dict()
    NUMBERS[what] = round(time.monotonic() - t0, 1)
    return out


def only(summary: dict[str, Any]) -> dict[str, Any]:
    (robot,) = summary["robots"]
    return dict(robot)


def status(env: GpuRobot) -> dict[str, Any]:
    from edge_deploy.rollout import fleet_status

    (st,) = fleet_status(env.fleet)
    return st


def served(env: GpuRobot, path: str) -> str:
    """GET a path of the robot's service (robots share the host's network namespace here)."""
    import httpx

    return httpx.get(f"http://127.0.0.1:{env.robot.service_port}{path}", timeout=30).text


def test_simulated_robot_is_gpu_and_runs_the_jetson_compose_file(gpu_robot: GpuRobot) -> None:
    (robot,) = yaml.safe_load(gpu_robot.fleet.read_text())["robots"]
    assert (robot["gpu"], robot["allow_cpu_fallback"]) == (True, False)
    runtimes = json.loads(gpu_robot.docker("info", "--format", "{{json .Runtimes}}"))
    assert "nvidia" in runtimes  # the stand-in the simulator registers


def test_a_release_that_allows_the_cpu_on_purpose_goes_on(gpu_robot: GpuRobot) -> None:
    out = deploy(gpu_robot, "1.0.0", "rollout_1.0.0_cpu_allowed_by_release_s")
    assert out["ok"] and only(out)["outcome"] == "updated", json.dumps(out, indent=1)
    st = status(gpu_robot)
    assert (st["version"], st["health"]) == ("1.0.0", "healthy")
    ready = st["engine"]
    assert (ready["backend"], ready["backend_requested"]) == ("onnxruntime", "auto") and ready["fallback"]
    # compose.jetson.yaml applied for real: the container runs on the engine's nvidia runtime.
    cid = gpu_robot.docker("ps", "-q", "--filter", "label=com.docker.compose.service=edge-runtime").split()[0]
    inspect = json.loads(gpu_robot.docker("inspect", cid))[0]
    assert inspect["HostConfig"]["Runtime"] == "nvidia"
    assert "NVIDIA_VISIBLE_DEVICES=all" in inspect["Config"]["Env"]
    # The service says why in its log and its metrics too.
    log = gpu_robot.docker("logs", cid)
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


def test_a_cpu_fallback_fails_the_gate_and_the_robot_rolls_back(gpu_robot: GpuRobot) -> None:
    why = status(gpu_robot)["engine"]["fallback"]  # the service's own sentence, from its /readyz
    out = deploy(gpu_robot, "1.0.1", "rollout_1.0.1_refused_and_rolled_back_s")
    r = only(out)
    NUMBERS["automatic_rollback_s"] = r["timings"].get("rollback")
    NUMBERS["gate_reason"] = r["reason"]
    assert not out["ok"] and (r["outcome"], r["stage"]) == ("rolled_back", "health"), json.dumps(r, indent=1)
    assert r["reason"].startswith(
        "expected backend tensorrt (the robot has gpu: true in fleet.yaml), served onnxruntime on the CPU: "
        f"the service says: {why.rstrip('.')}; "
    ), r["reason"]
    assert r["reason"].endswith("; restored 1.0.0")
    st = status(gpu_robot)
    assert (st["version"], st["health"], st["bad_versions"]) == ("1.0.0", "healthy", ["1.0.1"])
    assert st["engine"]["ready"] is True


def test_allow_cpu_fallback_in_the_inventory_lets_it_through(gpu_robot: GpuRobot) -> None:
    doc = yaml.safe_load(gpu_robot.fleet.read_text())
    doc["robots"][0]["allow_cpu_fallback"] = True
    gpu_robot.fleet.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = deploy(
        gpu_robot, "1.0.1", "rollout_1.0.1_cpu_allowed_by_inventory_s", force=True
    )  # marked bad before
    assert out["ok"] and only(out)["outcome"] == "updated", json.dumps(out, indent=1)
    st = status(gpu_robot)
    assert (st["version"], st["health"], st["engine"]["backend"]) == ("1.0.1", "healthy", "onnxruntime")
