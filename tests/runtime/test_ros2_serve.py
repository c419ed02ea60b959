"""End to end: ``edge-runtime serve --ros2`` as one process, the ROS 2-like peer as another, over DDS."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions, get_backend
from edge_runtime.bundle import ModelBundle
from tests.runtime.ros2_support import (
    dds_env,
    expected_feeds,
    finish_peer,
    need_cyclonedds,
    random_domain,
    start_peer,
)
from tests.runtime.test_serve_cli import serving

pytestmark = pytest.mark.timeout(240)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_serve_ros2_round_trip_metrics_and_clean_stop(tiny_bundle: Path, tmp_path: Path) -> None:
    need_cyclonedds()
    domain = random_domain()
    env = dds_env(domain, PYTHONUNBUFFERED="1", EDGE_ROS2_MAX_RATE_HZ="50")
    with serving(tiny_bundle, tmp_path / "cache", "--ros2", env=env) as (url, proc):
        out = tmp_path / "peer.npz"
        err = finish_peer(start_peer(domain, out, "--rounds", "3", "--bad", "encoding"))
        assert out.exists(), err
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0]
    assert proc.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal it stopped on
    assert "ROS 2 bridge started" in log
    assert "ROS 2 image: message refused: Image encoding 'yuv422' is not supported" in log

    got = np.load(out)
    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch)
    engine = backend.load(backend.build(bundle, options), bundle, options)
    for image, state, action in zip(got["images"], got["states"], got["actions"], strict=True):
        np.testing.assert_allclose(
            action, engine.infer(expected_feeds(image, state))["action"][0], rtol=1e-5, atol=1e-5
        )
    assert len(got["actions"]) == 3

    assert metric(text, "edge_ros2_actions_total") >= 3
    assert metric(text, "edge_ros2_latency_seconds_count") >= 3
    assert metric(text, 'edge_ros2_bad_messages_total{reason="encoding",stream="image"}') == 1


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"ROS_DOMAIN_ID": "300"}, "error: ROS_DOMAIN_ID 300 is out of range; ROS 2 allows 0 to 232."),
        (
            {"EDGE_ROS2_IMAGE_QOS": "fast"},
            "error: ROS 2 QoS profile 'fast' is unknown; use one of: reliable, sensor_data.",
        ),
        (
            {"EDGE_ROS2_STATE_TOPIC": "/robot//state"},
            "error: ROS 2 topic name '/robot//state' is not valid: use tokens of letters, digits and underscores, "
            "not starting with a digit, separated by single '/' (e.g. /camera/image_raw).",
        ),
    ],
)
def test_bad_ros2_settings_end_serve_at_start_in_one_sentence(
    tiny_bundle: Path, tmp_path: Path, env: dict[str, str], sentence: str
) -> None:
    import subprocess
    import sys

    need_cyclonedds()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--cache",
            str(tmp_path),
        ],
        env={**dds_env(random_domain()), "EDGE_ROS2": "1", "EDGE_PORT": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == sentence
    assert "Traceback" not in proc.stderr and "Uvicorn running" not in proc.stderr + proc.stdout
