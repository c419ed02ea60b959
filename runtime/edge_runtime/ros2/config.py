"""Ros2Config: topics, domain and timing of the ROS 2 bridge, read from the environment on the robot."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge_runtime.errors import EdgeError
from edge_runtime.ros2.qos import profile


class Ros2ConfigError(EdgeError):
    """A ROS 2 bridge setting is invalid."""


# A fully qualified ROS 2 topic name (rcl's rules, without substitutions or ~): tokens of letters, digits and
# underscores that do not start with a digit, separated by single slashes, no trailing slash.
_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_ROS_TOPIC = re.compile(rf"/?{_TOKEN}(?:/{_TOKEN})*")
# rmw's limit on a DDS topic name (255) less the longest ROS prefix ("rq/" … "Request" for services): 247
MAX_TOPIC_LEN = 247


def dds_topic(name: str) -> str:
    """The DDS topic of a ROS 2 topic: ``/camera/image_raw`` → ``rt/camera/image_raw`` (already ``rt/``: kept).

    A name that ROS 2 would refuse (``rcl_validate_topic_name``) is refused here, at start, in one sentence.
    """
    name = name.strip()
    bare = name[3:] if name.startswith("rt/") else name
    if not bare.strip("/"):
        raise Ros2ConfigError(f"ROS 2 topic name {name!r} is empty.")
    if not _ROS_TOPIC.fullmatch(bare):
        raise Ros2ConfigError(
            f"ROS 2 topic name {name!r} is not valid: use tokens of letters, digits and underscores, not starting "
            "with a digit, separated by single '/' (e.g. /camera/image_raw)."
        )
    if len(bare.lstrip("/")) + 1 > MAX_TOPIC_LEN:
        raise Ros2ConfigError(f"ROS 2 topic name {name[:40]!r}… is longer than {MAX_TOPIC_LEN} characters.")
    return "rt/" + bare.lstrip("/")


@dataclass(frozen=True)
class Ros2Config:
    """Everything the bridge needs besides the model. Times are in seconds; topics are DDS names (``rt/…``).

    ``image_input``/``state_input``/``action_output`` name model tensors; empty means "pick by shape": the
    first 4-D input is the image, the first 2-D input the state, the first output the action.
    """

    domain_id: int = 0
    image_topic: str = "rt/camera/image_raw"
    state_topic: str = "rt/robot/state"
    action_topic: str = "rt/policy/action"
    image_qos: str = "sensor_data"
    state_qos: str = "sensor_data"
    action_qos: str = "reliable"
    sync_window_s: float = 0.05
    stale_after_s: float = 0.5
    max_rate_hz: float = 30.0
    pixel_scale: float = 1.0 / 255.0
    # Also age frames by their header stamp (wall clock); turn off when the camera stamps with sim time.
    stamp_check: bool = True
    image_input: str = ""
    state_input: str = ""
    action_output: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.domain_id <= 232:
            raise Ros2ConfigError(f"ROS_DOMAIN_ID {self.domain_id} is out of range; ROS 2 allows 0 to 232.")
        for name in ("image_topic", "state_topic", "action_topic"):
            object.__setattr__(self, name, dds_topic(getattr(self, name)))
        for name in ("image_qos", "state_qos", "action_qos"):
            profile(getattr(self, name))
        if self.sync_window_s < 0 or self.stale_after_s <= 0:
            raise Ros2ConfigError(
                f"ROS 2 sync window ({self.sync_window_s}s) must be ≥ 0 and stale age ({self.stale_after_s}s) > 0."
            )
        if self.max_rate_hz <= 0:
            raise Ros2ConfigError(f"ROS 2 max rate {self.max_rate_hz} Hz must be greater than zero.")

    @property
    def min_interval_s(self) -> float:
        return 1.0 / self.max_rate_hz

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ros2Config:
        """Read ``ROS_DOMAIN_ID`` and the ``EDGE_ROS2_*`` variables (docs/ros2.md lists them); unset → default."""
        env = os.environ if env is None else env
        d = cls()

        def text(var: str, default: str) -> str:
            return env.get(var, "").strip() or default

        def number(var: str, default: float, scale: float = 1.0) -> float:
            raw = env.get(var, "").strip()
            if not raw:
                return default
            try:
                return float(raw) * scale
            except ValueError:
                raise Ros2ConfigError(f"{var}={raw!r} is not a number.") from None

        domain = number("ROS_DOMAIN_ID", d.domain_id)
        if domain != int(domain):
            raise Ros2ConfigError(f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID')!r} is not a whole number.")
        return cls(
            domain_id=int(domain),
            image_topic=text("EDGE_ROS2_IMAGE_TOPIC", d.image_topic),
            state_topic=text("EDGE_ROS2_STATE_TOPIC", d.state_topic),
            action_topic=text("EDGE_ROS2_ACTION_TOPIC", d.action_topic),
            image_qos=text("EDGE_ROS2_IMAGE_QOS", d.image_qos),
            state_qos=text("EDGE_ROS2_STATE_QOS", d.state_qos),
            action_qos=text("EDGE_ROS2_ACTION_QOS", d.action_qos),
            sync_window_s=number("EDGE_ROS2_SYNC_WINDOW_MS", d.sync_window_s, 1e-3),
            stale_after_s=number("EDGE_ROS2_STALE_MS", d.stale_after_s, 1e-3),
            max_rate_hz=number("EDGE_ROS2_MAX_RATE_HZ", d.max_rate_hz),
            pixel_scale=number("EDGE_ROS2_PIXEL_SCALE", d.pixel_scale),
            stamp_check=text("EDGE_ROS2_STAMP_CHECK", "1").lower() not in ("0", "false", "no", "off"),
            image_input=text("EDGE_ROS2_IMAGE_INPUT", ""),
            state_input=text("EDGE_ROS2_STATE_INPUT", ""),
            action_output=text("EDGE_ROS2_ACTION_OUTPUT", ""),
        )
