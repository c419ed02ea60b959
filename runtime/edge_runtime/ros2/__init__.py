"""Serve the policy to ROS 2 nodes over DDS (Cyclone DDS, the wire protocol of ``rmw_cyclonedds_cpp``).

``cyclonedds`` is imported only when a bridge is built, so importing this package stays cheap.
"""

from __future__ import annotations

from edge_runtime.ros2.bridge import Ros2Bridge
from edge_runtime.ros2.config import Ros2Config, Ros2ConfigError

__all__ = ["Ros2Bridge", "Ros2Config", "Ros2ConfigError"]
