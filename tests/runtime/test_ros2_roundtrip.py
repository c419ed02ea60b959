"""DDS round trip: the bridge in this process, a ROS 2-like camera/state publisher in a second process.

The peer checks nothing itself; it records what it sent and the actions it got, and the test compares each
action with a direct backend call on the same image and state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Iterator[object]:
    bundle = ModelBundle.load(tiny_bundle)
    backend = get_backend("onnxruntime")
    options = BuildOptions(batch=bundle.manifest.batch, intra_op_threads=1, inter_op_threads=1)
    eng = backend.load(backend.build(bundle, options), bundle, options)
    yield eng
    eng.close()


@pytest.fixture
def domain(monkeypatch: pytest.MonkeyPatch) -> int:
    need_cyclonedds()
    d = random_domain()
    for key, value in dds_env(d).items():
        if key in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID"):
            monkeypatch.setenv(key, value)
    return d


def make_bridge(engine: object, tiny_bundle: Path, **env: str) -> object:
    from prometheus_client import CollectorRegistry

    from edge_runtime.ros2 import Ros2Bridge, Ros2Config

    bundle = ModelBundle.load(tiny_bundle)
    import os

    config = Ros2Config.from_env({**os.environ, **env})
    return Ros2Bridge(infer=engine.infer, inputs=bundle.inputs, config=config, registry=CollectorRegistry())  # type: ignore[attr-defined]


def check_actions(out: Path, engine: object, rounds: int) -> None:
    got = np.load(out)
    assert len(got["actions"]) == rounds
    for image, state, action in zip(got["images"], got["states"], got["actions"], strict=True):
        expected = engine.infer(expected_feeds(image, state))["action"][0]  # type: ignore[attr-defined]
        assert action.shape == (7,)
        np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-5)


def test_round_trip_actions_equal_direct_backend_call(
    engine: object, tiny_bundle: Path, domain: int, tmp_path: Path
) -> None:
    bridge = make_bridge(engine, tiny_bundle)
    bridge.start()  # type: ignore[attr-defined]
    try:
        out = tmp_path / "peer.npz"
        err = finish_peer(start_peer(domain, out, "--rounds", "4"))
        assert out.exists(), err
        check_actions(out, engine, 4)
    finally:
        bridge.stop()  # type: ignore[attr-defined]
    reg = bridge.registry  # type: ignore[attr-defined]
    assert reg.get_sample_value("edge_ros2_actions_total") >= 4
    assert reg.get_sample_value("edge_ros2_latency_seconds_count") >= 4
    assert reg.get_sample_value("edge_ros2_messages_total", {"stream": "image"}) >= 4


def test_bad_messages_are_counted_logged_and_service_continues(
    engine: object, tiny_bundle: Path, domain: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_runtime.ros2")
    bridge = make_bridge(engine, tiny_bundle)
    bridge.start()  # type: ignore[attr-defined]
    try:
        out = tmp_path / "peer.npz"
        err = finish_peer(start_peer(domain, out, "--rounds", "2", "--bad", "encoding,size,state_size"))
        assert out.exists(), err
        check_actions(out, engine, 2)  # still serving after the bad messages
    finally:
        bridge.stop()  # type: ignore[attr-defined]
    reg = bridge.registry  # type: ignore[attr-defined]
    assert (
        reg.get_sample_value("edge_ros2_bad_messages_total", {"stream": "image", "reason": "encoding"}) == 1
    )
    assert reg.get_sample_value("edge_ros2_bad_messages_total", {"stream": "image", "reason": "size"}) == 1
    assert reg.get_sample_value("edge_ros2_bad_messages_total", {"stream": "state", "reason": "size"}) == 1
    text = caplog.text
    assert "'yuv422' is not supported" in text
    assert "8x8 rgb8 with step 24 needs 192" in text
    assert "has 51 values; the model needs 48" in text


def test_live_stream_is_rate_limited(engine: object, tiny_bundle: Path, domain: int, tmp_path: Path) -> None:
    """A 60 Hz camera into a bridge capped at 20 Hz: about 20 actions a second, the rest superseded."""
    bridge = make_bridge(engine, tiny_bundle, EDGE_ROS2_MAX_RATE_HZ="20")
    bridge.start()  # type: ignore[attr-defined]
    try:
        out = tmp_path / "stream.npz"
        err = finish_peer(start_peer(domain, out, "--stream-s", "2", "--hz", "60"))
        assert out.exists(), err
    finally:
        bridge.stop()  # type: ignore[attr-defined]
    got = np.load(out)
    reg = bridge.registry  # type: ignore[attr-defined]
    published = reg.get_sample_value("edge_ros2_actions_total")
    # Reliable QoS: the subscriber got every action but the last few still in flight when it stopped.
    assert published - 3 <= got["actions"] <= published
    assert 10 <= published <= 20 * float(got["seconds"]) + 2, (published, int(got["sent"]))
    assert reg.get_sample_value("edge_ros2_dropped_frames_total", {"reason": "superseded"}) > 0
