"""Ros2Config from the environment, topic naming and the ROS 2 QoS profiles."""

from __future__ import annotations

import pytest

from edge_runtime.errors import EdgeError
from edge_runtime.ros2 import Ros2Config, Ros2ConfigError
from edge_runtime.ros2.config import dds_topic
from edge_runtime.ros2.qos import RELIABLE, SENSOR_DATA, profile
from tests.runtime.ros2_support import need_cyclonedds


def test_defaults_follow_ros2_conventions() -> None:
    cfg = Ros2Config.from_env({})
    assert (cfg.domain_id, cfg.image_topic, cfg.state_topic, cfg.action_topic) == (
        0,
        "rt/camera/image_raw",
        "rt/robot/state",
        "rt/policy/action",
    )
    assert (cfg.image_qos, cfg.state_qos, cfg.action_qos) == ("sensor_data", "sensor_data", "reliable")


def test_from_env_reads_domain_topics_and_timing() -> None:
    cfg = Ros2Config.from_env(
        {
            "ROS_DOMAIN_ID": "42",
            "EDGE_ROS2_IMAGE_TOPIC": "/front/color/image_raw",
            "EDGE_ROS2_ACTION_TOPIC": "arm/cmd",
            "EDGE_ROS2_SYNC_WINDOW_MS": "20",
            "EDGE_ROS2_STALE_MS": "250",
            "EDGE_ROS2_MAX_RATE_HZ": "15",
            "EDGE_ROS2_ACTION_QOS": "sensor_data",
        }
    )
    assert cfg.domain_id == 42
    assert cfg.image_topic == "rt/front/color/image_raw" and cfg.action_topic == "rt/arm/cmd"
    assert cfg.sync_window_s == pytest.approx(0.02) and cfg.stale_after_s == pytest.approx(0.25)
    assert cfg.min_interval_s == pytest.approx(1 / 15)
    assert cfg.action_qos == "sensor_data"


def test_topic_prefix() -> None:
    assert dds_topic("/camera/image_raw") == "rt/camera/image_raw"
    assert dds_topic("rt/x") == "rt/x"
    with pytest.raises(Ros2ConfigError, match="empty"):
        dds_topic("/")


@pytest.mark.parametrize(
    "name",
    [
        "/camera//image",
        "/camera/image/",
        "/1camera",
        "/cam era",
        "/camera/~image",
        "/{ns}/image",
        "rt/a//b",
        "/é",
    ],
)
def test_topic_names_ros_2_refuses_are_one_sentence(name: str) -> None:
    with pytest.raises(Ros2ConfigError, match="is not valid") as err:
        dds_topic(name)
    assert "\n" not in str(err.value)


def test_topic_name_length_limit() -> None:
    assert dds_topic("/" + "a" * 246) == "rt/" + "a" * 246
    with pytest.raises(Ros2ConfigError, match="longer than 247"):
        dds_topic("/" + "a" * 247)


def test_bad_topic_from_env_is_refused_at_start() -> None:
    with pytest.raises(Ros2ConfigError, match="not valid"):
        Ros2Config.from_env({"EDGE_ROS2_ACTION_TOPIC": "/policy/action/"})


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"ROS_DOMAIN_ID": "300"}, "out of range"),
        ({"ROS_DOMAIN_ID": "abc"}, "not a number"),
        ({"ROS_DOMAIN_ID": "1.5"}, "whole number"),
        ({"EDGE_ROS2_MAX_RATE_HZ": "0"}, "greater than zero"),
        ({"EDGE_ROS2_STALE_MS": "-1"}, "stale age"),
        ({"EDGE_ROS2_IMAGE_QOS": "fast"}, "unknown"),
    ],
)
def test_bad_settings_are_one_sentence(env: dict[str, str], words: str) -> None:
    with pytest.raises(EdgeError) as err:
        Ros2Config.from_env(env)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_qos_profiles_match_rclpy() -> None:
    assert (SENSOR_DATA.reliable, SENSOR_DATA.depth, SENSOR_DATA.transient_local) == (False, 5, False)
    assert (RELIABLE.reliable, RELIABLE.depth, RELIABLE.transient_local) == (True, 10, False)
    assert profile("reliable") is RELIABLE


def test_qos_profiles_as_cyclone_policies() -> None:
    need_cyclonedds()
    from cyclonedds.core import Policy

    sensor = SENSOR_DATA.to_dds()
    assert sensor[Policy.Reliability] == Policy.Reliability.BestEffort
    assert sensor[Policy.History] == Policy.History.KeepLast(5)
    assert sensor[Policy.Durability] == Policy.Durability.Volatile
    reliable = RELIABLE.to_dds()
    assert isinstance(reliable[Policy.Reliability], Policy.Reliability.Reliable)
    assert reliable[Policy.History] == Policy.History.KeepLast(10)
    for qos in (sensor, reliable):  # plain CDR only, like rmw_cyclonedds_cpp on Humble
        assert qos[Policy.DataRepresentation] == Policy.DataRepresentation(use_cdrv0_representation=True)
