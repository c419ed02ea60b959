"""One robot on the bench with no registry: ``JetsonDeployment.deploy()`` without ``release=`` against a
simulated robot (its own sshd and dockerd, arm64 under QEMU). The README's Python API block runs as it is
written, as a script; a second deploy with a changed model sends at most the model plus 1 MiB over SSH
(bytes measured and printed); a broken model fails the health gate and the robot goes back to what it ran.

The robot pulls nothing from a registry: the image names ``edge-deploy.local/…`` that no registry serves,
and its engine's image store holds nothing else afterwards. The host builds with the stand-in bases from
the local registry (scripts/host-setup), as the other image tests do; the build cache they share makes a
model change a small build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import STANDIN, STANDIN_PYTHON
from tests.e2e.fleet_fixtures import PLATFORM, REGISTRY, FleetImages, SimFleet, need_fleet_host, sh

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def readme_block() -> str:
    """The README's Python API block, exactly as written."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"Python API \(details in.*?```python\n(.*?)```", text, re.S)
    assert m, "README.md has no Python API block"
    return m.group(1)


@dataclass
class Bench:
    """The simulated robot, the operator's directory and environment, and the numbers measured."""

    fleet: SimFleet
    work: Path
    env: dict[str, str]
    numbers: dict[str, Any] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)
    second: dict[str, Any] = field(default_factory=dict)

    def robot_images(self) -> list[str]:
        out = self.fleet.docker(None, "images", "--format", "{{.Repository}}")
        return sorted(set(out.split()))


@pytest.fixture(scope="module")
def bench(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    from edge_deploy.images.files import stage_context
    from edge_deploy.model.sample import write_sample_policy
    from edge_deploy.simulation import simulate as sim

    need_fleet_host()
    work = tmp_path_factory.mktemp("direct")
    # Every deploy of this file builds from one snapshot of the tool's files, so a model change is the only
    # change between two images even while the checkout is being edited.
    source = stage_context(work / "source")
    write_sample_policy(work / "policy.pt", None)
    numbers: dict[str, Any] = {}
    try:
        with sim.simulated(
            1, "direct", registry=REGISTRY, platform=PLATFORM, ssh_port_base=2381, service_port_base=18381
        ) as s:
            env = {
                **os.environ,
                "JETSON_IP": "127.0.0.1",
                "EDGE_FLEET": str(s.fleet_file),  # the robot's SSH port, key, known_hosts, service port
                "EDGE_DEPLOY_HOME": str(work / ".edge"),
                "EDGE_L4T_BASE": STANDIN,
                "EDGE_CONVERTER_BASE": STANDIN,
                "EDGE_RUNTIME_PYTHON": STANDIN_PYTHON,
                "EDGE_DEPLOY_SOURCE": str(source),
            }
            # The fleet helpers that read the robot (status, state, infer, docker); no registry images.
            fl = SimFleet(s, work / ".edge" / "dev-releases", FleetImages(""), "", "", numbers)
            yield Bench(fl, work, env, numbers)
    finally:
        if numbers:
            print("\ndirect deploy numbers:", json.dumps(numbers, indent=2))


def deploy_script(bench: Bench, body: str, name: str) -> dict[str, Any]:
    """Run ``body`` as a script in the operator's directory; it leaves ``result`` (a RolloutResult)."""
    out = bench.work / f"{name}.json"
    script = bench.work / f"{name}.py"
    script.write_text(
        body
        + f"\nimport json, pathlib\npathlib.Path({str(out)!r}).write_text(json.dumps(result.to_dict()))\n"
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(script)],
        cwd=bench.work,
        env=bench.env,
        capture_output=True,
        text=True,
        timeout=2000,
    )
    bench.numbers[f"{name}_s"] = round(time.monotonic() - t0, 1)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return dict(json.loads(out.read_text()))


def why(summary: dict[str, Any]) -> str:
    return json.dumps([{k: r.get(k) for k in ("outcome", "stage", "reason")} for r in summary["robots"]])


@pytest.fixture(scope="module")
def first(bench: Bench) -> dict[str, Any]:
    """The README's block, run as written: the robot's first release, the whole image over SSH."""
    if not bench.first:
        bench.first = deploy_script(bench, readme_block(), "readme")
    return bench.first


def test_readme_block_deploys_to_a_robot_with_no_registry(bench: Bench, first: dict[str, Any]) -> None:
    r = first["robots"][0]
    assert first["ok"] and r["outcome"] == "updated", why(first)
    assert first["version"].startswith("0.0.0-dev.")
    assert first["image"].startswith("edge-deploy.local/edge-deploy/runtime@sha256:")
    assert r["image_bytes"] > 50 * MIB  # the robot had nothing: base, code and model all travel
    bench.numbers["first_deploy_image_bytes"] = r["image_bytes"]
    assert bench.fleet.infer(bench.fleet.names[0]) == [1, 7]  # it serves the model
    assert bench.robot_images() == ["edge-deploy.local/edge-deploy/runtime"]  # nothing from a registry
    assert bench.fleet.state()["current"] == first["version"]


CHANGED = """
import torch

from edge_deploy import JetsonDeployment

model = torch.jit.load("policy.pt")
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.01)  # retrained: the same graph, other weights
model.save("{name}.pt")
image, state = torch.rand(1, 3, 224, 224), torch.rand(1, 48)
deployer = JetsonDeployment(model_path="{name}.pt", jetson_ip="127.0.0.1", jetson_model="orin_nano")
deployer.export_onnx(sample_inputs={{"image": image, "robot_state": state}}, output_path="{name}.onnx")
conversion = deployer.convert_tensorrt(onnx_path="{name}.onnx", precision="fp16")
result = deployer.deploy(include_ros2=True, auto_start=True)
"""

BROKEN = """
import torch

from edge_deploy import JetsonDeployment
from edge_deploy.model.sample import build_policy


class Broken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.policy = build_policy()

    def forward(self, image: torch.Tensor, robot_state: torch.Tensor) -> torch.Tensor:
        return self.policy(image, robot_state) * torch.log(robot_state.sum() * 0.0)  # never finite


image, state = torch.rand(1, 3, 224, 224), torch.rand(1, 48)
torch.jit.trace(Broken().eval(), (image, state)).save("broken.pt")
deployer = JetsonDeployment(model_path="broken.pt", jetson_ip="127.0.0.1", jetson_model="orin_nano")
deployer.export_onnx(sample_inputs={"image": image, "robot_state": state}, output_path="broken.onnx")
deployer.convert_tensorrt(onnx_path="broken.onnx", precision="fp16")
result = deployer.deploy(include_ros2=True, auto_start=True)
"""


def bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def second(bench: Bench, first: dict[str, Any]) -> dict[str, Any]:
    """A retrained model deployed after the first: the robot's second release."""
    if not bench.second:
        bench.second = deploy_script(bench, CHANGED.format(name="retrained"), "retrained")
    return bench.second


def test_a_model_only_change_sends_the_model_and_at_most_one_mib_more(
    bench: Bench, first: dict[str, Any], second: dict[str, Any]
) -> None:
    out = second
    r = out["robots"][0]
    assert out["ok"] and r["outcome"] == "updated", why(out)
    assert out["version"] != first["version"]
    # The robot serves over ROS 2 too: the new release's bridge waited in standby, passed the gate's standby
    # probe while the old bridge still answered, and took over (docs/ros2.md, "Hand-over").
    assert r["update"].get("strategy") == "hand-over" and "fallback" not in r["update"], r["update"]
    model = bundle_bytes(bench.work / "retrained.fp16.bundle")
    bench.numbers["model_change_image_bytes"] = r["image_bytes"]
    bench.numbers["model_change_bundle_bytes"] = model
    print(f"\nmodel-only change: {r['image_bytes']} bytes over SSH for a {model}-byte bundle")
    assert 0 < r["image_bytes"] <= model + MIB, bench.numbers
    assert bench.fleet.infer(bench.fleet.names[0]) == [1, 7]
    assert bench.fleet.state()["current"] == out["version"]


def test_a_broken_model_fails_its_gate_and_the_robot_goes_back(bench: Bench, first: dict[str, Any]) -> None:
    before = bench.fleet.state()["current"]
    out = deploy_script(bench, BROKEN, "broken")
    r = out["robots"][0]
    assert not out["ok"] and r["outcome"] == "rolled_back", why(out)
    assert "non-finite" in r["reason"], r["reason"]
    bench.numbers["broken_rollback_s"] = r["timings"].get("rollback")
    assert bench.fleet.state()["current"] == before
    assert bench.fleet.infer(bench.fleet.names[0]) == [1, 7]  # the release it ran serves again


# --- The same path for a fleet: `fleet rollout --transport ssh-copy`, and a rollback to a release a robot no
# longer keeps, which goes over ssh-copy when the host's image store holds its image. Both reuse the two
# development releases above (no new build), after the robot lost the image of the one it goes to.


def edge(bench: Bench, *args: str) -> Any:
    """``edge-deploy ARGS --json`` in the operator's directory (EDGE_FLEET names the robot); its JSON."""
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "edge_deploy", *args, "--json"],
        cwd=bench.work,
        env=bench.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    bench.numbers[f"{args[1]}_ssh_copy_s"] = round(time.monotonic() - t0, 1)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return json.loads(p.stdout)


def drop_image(bench: Bench, ref: str) -> None:
    """The robot forgets ``ref``'s image (its tag as ssh-copy names it); the layers it shares stay."""
    repository, _, digest = ref.partition("@")
    bench.fleet.docker(None, "image", "rm", "-f", f"{repository}:edge-{digest.split(':', 1)[1][:12]}")
    sock = f"unix://{bench.fleet.robot(None).socket}"
    p = sh("docker", "-H", sock, "image", "inspect", ref, check=False, timeout=120)
    assert p.returncode != 0 and "No such image" in p.stderr, f"{ref} is still on the robot"


def test_rollout_with_ssh_copy_pulls_through_the_forward_only_what_the_robot_lacks(
    bench: Bench, first: dict[str, Any], second: dict[str, Any]
) -> None:
    version, ref = first["version"], first["image"]
    assert bench.fleet.state()["current"] != version  # the robot runs the retrained model
    drop_image(bench, ref)
    releases = str(bench.work / ".edge" / "dev-releases")
    out = edge(
        bench,
        "fleet",
        "rollout",
        version,
        "--releases-dir",
        releases,
        "--transport",
        "ssh-copy",
        "--insecure-skip-signature-check",
    )
    r = out["robots"][0]
    assert out["ok"] and r["outcome"] == "updated", why(out)
    model = bundle_bytes(bench.work / "retrained.fp16.bundle")  # the same network, other weights
    bench.numbers["rollout_ssh_copy_image_bytes"] = r["image_bytes"]
    print(f"\nrollout --transport ssh-copy: {r['image_bytes']} bytes over SSH")
    assert 0 < r["image_bytes"] <= model + MIB, bench.numbers  # counted, and only the lacking layers
    # Nothing names a registry on the robot: the image came through the host's forward.
    assert bench.robot_images() == ["edge-deploy.local/edge-deploy/runtime"]
    assert bench.fleet.state()["current"] == version
    assert bench.fleet.infer(bench.fleet.names[0]) == [1, 7]


def test_rollback_to_a_release_no_longer_kept_goes_over_ssh_copy_from_the_host_store(
    bench: Bench, first: dict[str, Any], second: dict[str, Any]
) -> None:
    current = bench.fleet.state()["current"]
    target = next(o for o in (second, first) if o["version"] != current)
    drop_image(bench, target["image"])
    releases = str(bench.work / ".edge" / "dev-releases")
    rows = edge(
        bench,
        "fleet",
        "rollback",
        "--to",
        target["version"],
        "--releases-dir",
        releases,
        "--insecure-skip-signature-check",
    )
    r = rows[0]
    assert r["outcome"] == "updated", json.dumps(rows)
    bench.numbers["rollback_ssh_copy_image_bytes"] = r["image_bytes"]
    # No --transport: the host's store holds the image, so it went over SSH (a registry pull counts None).
    model = bundle_bytes(bench.work / "retrained.fp16.bundle")
    assert r["image_bytes"] is not None and 0 < r["image_bytes"] <= model + MIB, json.dumps(rows)
    assert bench.robot_images() == ["edge-deploy.local/edge-deploy/runtime"]
    assert bench.fleet.state()["current"] == target["version"]
    assert bench.fleet.infer(bench.fleet.names[0]) == [1, 7]
