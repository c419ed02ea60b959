"""Ros2Bridge logic without traffic: pairing window, stale frames, rate limit, failures, set-up errors.

ObservationSync is driven with explicit times; the bridge's serving step uses a recorder for the action
writer. The DDS round trip itself is in test_ros2_roundtrip.py and test_ros2_serve.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import TensorSpec
from edge_runtime.errors import BackendUnavailable, EdgeError
from edge_runtime.ros2 import Ros2Bridge, Ros2Config
from edge_runtime.ros2.bridge import Frame, ObservationSync, Pair
from tests.runtime.ros2_support import CYCLONEDDS_LOOPBACK, need_cyclonedds, random_domain

INPUTS = [
    TensorSpec("image", "float32", ("batch", 3, 4, 4)),
    TensorSpec("robot_state", "float32", ("batch", 2)),
]


def frame(value: float, arrived: float, stamp_age: float = 0.0) -> Frame:
    return Frame(np.array([value], np.float32), arrived, stamp_age)


def sync(window: float = 0.05, stale: float = 0.5, interval: float = 0.0) -> ObservationSync:
    return ObservationSync(window_s=window, stale_after_s=stale, min_interval_s=interval)


def test_image_pairs_with_the_latest_state_in_the_window() -> None:
    s = sync()
    s.put_state(frame(1, 99.0))
    s.put_state(frame(2, 99.99))
    s.put_image(frame(9, 100.0))
    pair, _ = s.poll(100.0)
    assert pair is not None and (pair.image.value[0], pair.state.value[0]) == (9, 2)
    assert s.poll(100.001)[0] is None  # an image is used once


def test_image_waits_for_a_state_then_is_dropped_as_unsynced() -> None:
    s = sync(window=0.05)
    s.put_state(frame(1, 90.0))  # far too old
    s.put_image(frame(9, 100.0))
    pair, wait = s.poll(100.01)
    assert pair is None and wait == pytest.approx(0.04)
    s.put_state(frame(2, 100.02))
    pair, _ = s.poll(100.02)
    assert pair is not None and pair.state.value[0] == 2

    s.put_image(frame(8, 101.0))
    assert s.poll(101.06)[0] is None
    assert s.drops == {"unsynced": 1}


def test_stale_images_are_dropped_by_arrival_and_by_stamp() -> None:
    s = sync(window=1.0, stale=0.1)
    s.put_image(frame(1, 100.0))
    assert s.poll(100.2)[0] is None
    s.put_state(frame(0, 100.2))
    s.put_image(frame(2, 100.2, stamp_age=0.5))  # its header stamp was already 0.5 s old
    assert s.poll(100.2)[0] is None
    assert s.drops == {"stale": 2}


def test_rate_limit_keeps_only_the_newest_image() -> None:
    s = sync(window=1.0, interval=0.1)
    s.put_state(frame(0, 100.0))
    s.put_image(frame(1, 100.0))
    assert s.poll(100.0)[0] is not None
    s.put_image(frame(2, 100.01))
    pair, wait = s.poll(100.02)
    assert pair is None and wait == pytest.approx(0.08)
    s.put_image(frame(3, 100.03))
    pair, _ = s.poll(100.1)
    assert pair is not None and pair.image.value[0] == 3
    assert s.drops == {"superseded": 1}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def write(self, msg: Any) -> None:
        self.sent.append(msg)


@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ros2Bridge]:
    need_cyclonedds()
    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONEDDS_LOOPBACK)

    def policy(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds["robot_state"][0, 0] < 0:
            raise RuntimeError("engine fault")
        return {"action": np.concatenate([[feeds["image"].mean()], feeds["robot_state"][0]])[None]}

    b = Ros2Bridge(infer=policy, inputs=INPUTS, config=Ros2Config(domain_id=random_domain()))
    yield b
    b.stop()


def pair(image: float, *state: float) -> Pair:
    return Pair(
        Frame(np.full((1, 3, 4, 4), image, np.float32), time.monotonic()),
        Frame(np.array([state], np.float32), time.monotonic()),
    )


def test_serving_publishes_the_action_and_survives_an_engine_fault(bridge: Ros2Bridge) -> None:
    rec = Recorder()
    bridge._writer = rec
    bridge._serve(pair(0.5, -1, 0))  # the policy raises
    bridge._serve(pair(0.5, 3, 4))
    assert [m.data for m in rec.sent] == [[0.5, 3.0, 4.0]]
    assert [(d.label, d.size, d.stride) for d in rec.sent[0].layout.dim] == [("action", 3, 3)]
    reg = bridge.registry
    assert reg.get_sample_value("edge_ros2_infer_errors_total") == 1
    assert reg.get_sample_value("edge_ros2_actions_total") == 1
    assert reg.get_sample_value("edge_ros2_latency_seconds_count") == 1


def test_thread_starts_and_stops_quickly(bridge: Ros2Bridge) -> None:
    bridge.start()
    assert bridge._thread is not None and bridge._thread.is_alive()
    t0 = time.monotonic()
    bridge.stop()
    assert time.monotonic() - t0 < 1.0
    bridge.stop()  # twice is fine
    with pytest.raises(EdgeError, match="was stopped"):
        bridge.start()


def test_idle_bridge_does_not_spin(bridge: Ros2Bridge) -> None:
    """With no traffic the thread sleeps in the wait set: well under 20% of a core."""
    import resource

    bridge.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    time.sleep(1.0)
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    assert used < 0.2, f"idle bridge used {used:.2f} s CPU in 1 s"


def test_model_inputs_without_a_topic_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    need_cyclonedds()
    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONEDDS_LOOPBACK)
    extra = [*INPUTS, TensorSpec("goal", "float32", ("batch", 3, 1))]
    with pytest.raises(EdgeError, match="goal, which no ROS 2 topic"):
        Ros2Bridge(infer=dict, inputs=extra, config=Ros2Config(domain_id=random_domain()))
    with pytest.raises(EdgeError, match="no tensor 'camera'"):
        Ros2Bridge(
            infer=dict, inputs=INPUTS, config=Ros2Config(domain_id=random_domain(), image_input="camera")
        )


def test_missing_cyclonedds_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "cyclonedds" or m.startswith("cyclonedds.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable, match="needs the cyclonedds package") as err:
        Ros2Bridge(infer=dict, inputs=INPUTS, config=Ros2Config())
    assert "\n" not in str(err.value)
