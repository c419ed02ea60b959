"""ROS 2 QoS profiles, as rclpy defines them, mapped onto Cyclone DDS policies.

Both profiles also pin the data representation to XCDR1 (plain CDR), the only one ROS 2 Humble's
``rmw_cyclonedds_cpp`` offers; Cyclone DDS would pick XCDR2 for some type shapes, and an endpoint that
offers only XCDR2 does not match a ROS 2 one (tests/runtime/test_ros2_wire.py shows both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import EdgeError


@dataclass(frozen=True)
class QosProfile:
    """The part of a ROS 2 QoS profile the bridge uses; ``to_dds()`` builds the Cyclone DDS ``Qos``."""

    name: str
    reliable: bool
    depth: int
    transient_local: bool = False

    def to_dds(self) -> Any:
        from cyclonedds.core import Policy
        from cyclonedds.qos import Qos
        from cyclonedds.util import duration

        reliability = (
            Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
            if self.reliable
            else Policy.Reliability.BestEffort
        )
        durability = Policy.Durability.TransientLocal if self.transient_local else Policy.Durability.Volatile
        return Qos(
            reliability,
            durability,
            Policy.History.KeepLast(self.depth),
            Policy.DataRepresentation(use_cdrv0_representation=True),
        )


# rclpy.qos.qos_profile_sensor_data: best effort, keep last 5, volatile (cameras, robot state).
SENSOR_DATA = QosProfile("sensor_data", reliable=False, depth=5)
# rclpy.qos.qos_profile_system_default as ROS 2 nodes use it: reliable, keep last 10, volatile.
RELIABLE = QosProfile("reliable", reliable=True, depth=10)

PROFILES = {p.name: p for p in (SENSOR_DATA, RELIABLE)}


def profile(name: str) -> QosProfile:
    """Look up a profile by the name used in configuration (``sensor_data`` or ``reliable``)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise EdgeError(
            f"ROS 2 QoS profile {name!r} is unknown; use one of: {', '.join(sorted(PROFILES))}."
        ) from None
