"""The bridge's probe (the rollout gate's DDS check): ``python -m edge_runtime.ros2.probe`` in a second
process gets one inference on a zero observation over DDS, on the probe's own topics, and nothing reaches the
action topic; without a bridge it ends in one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions, get_backend
from edge_runtime.bundle import ModelBundle
from tests.runtime.ros2_support import REPO, dds_env, need_cyclonedds, random_domain

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Iterator[Any]:
    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch, intra_op_threads=1, inter_op_threads=1)
    eng = backend.load(backend.build(bundle, options), bundle, options)
    yield eng
    eng.close()


def run_probe(domain: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.ros2.probe", *args],
        env=dds_env(domain),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probe_round_trip_answers_on_its_own_topic(
    engine: Any, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_cyclonedds()
    from prometheus_client import CollectorRegistry

    from edge_runtime.ros2 import Ros2Bridge, Ros2Config

    domain = random_domain()
    env = dds_env(domain)
    monkeypatch.setenv("CYCLONEDDS_URI", env["CYCLONEDDS_URI"])
    seen: list[dict[str, np.ndarray]] = []

    def infer(feeds: dict[str, np.ndarray]) -> Any:
        seen.append(feeds)
        return engine.infer(feeds)

    bundle = ModelBundle.load(tiny_bundle)
    registry = CollectorRegistry()
    bridge = Ros2Bridge(
        infer=infer, inputs=bundle.inputs, config=Ros2Config(domain_id=domain), registry=registry
    )
    bridge.start()
    try:
        proc = run_probe(domain, "--timeout", "20")
    finally:
        bridge.stop()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["domain_id"] == domain
    assert result["action"] == "action" and result["action_size"] == 7
    assert 0 < result["round_trip_ms"] < 20_000
    # one inference on zeros of the model's own input shapes; no action published on the action topic
    assert len(seen) == 1
    assert {k: (v.shape, float(np.abs(v).max())) for k, v in seen[0].items()} == {
        "image": ((1, 3, 224, 224), 0.0),
        "robot_state": ((1, 48), 0.0),
    }
    assert registry.get_sample_value("edge_ros2_actions_total") == 0
    assert registry.get_sample_value("edge_ros2_probes_total") == 1


def test_probe_without_bridge_is_one_sentence() -> None:
    need_cyclonedds()
    proc = run_probe(random_domain(), "--timeout", "1")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No ROS 2 bridge answered on domain"), proc.stderr


def test_probe_refuses_a_bad_domain_and_timeout() -> None:
    need_cyclonedds()
    env = {**dds_env(1), "ROS_DOMAIN_ID": "300"}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.ros2.probe"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: ROS_DOMAIN_ID 300 is out of range; ROS 2 allows 0 to 232."
    )
    proc = run_probe(1, "--timeout", "0")
    assert proc.returncode == 1 and "--timeout 0 must be between 0 and 600 seconds." in proc.stderr
