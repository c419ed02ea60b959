"""The ROS 2 message types the bridge speaks, declared for Cyclone DDS exactly as ``rmw_cyclonedds_cpp`` puts
them on the wire: same field order (CDR is positional) and the ROS 2 DDS type names
(``<pkg>::msg::dds_::<Type>_``), so a ROS 2 Humble node and this module see the same topic type.

Importing this module needs ``cyclonedds``; the rest of ``edge_runtime.ros2`` imports it only when a bridge
is built. No ``from __future__ import annotations`` here: cyclonedds resolves the field annotations at run
time and cannot resolve them from strings on every Python version we support.
"""
# mypy: disable-error-code="type-arg, assignment"
# (cyclonedds's IDL annotations such as sequence[uint8] are not Python types; its mypy plugin is not enabled.)

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import float32, int32, sequence, uint8, uint32

from edge_runtime.ros2._compat import use_bytes_for, without_type_information


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    """builtin_interfaces/msg/Time: seconds and nanoseconds since the epoch (ROS time)."""

    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    """std_msgs/msg/Header."""

    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    """sensor_msgs/msg/Image. ``data`` travels as ``uint8[]``; in Python it is ``bytes`` (see ``_compat``)."""

    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ""
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = b""


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    """std_msgs/msg/MultiArrayDimension."""

    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    """std_msgs/msg/MultiArrayLayout."""

    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@dataclass
class Float32MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float32MultiArray_"):
    """std_msgs/msg/Float32MultiArray: the robot state and the action."""

    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float32] = field(default_factory=list)


# uint8[] as one bytes block where the installed cyclonedds allows it (see _compat: 0.10 and 11 do).
BYTES_FAST_PATH = use_bytes_for(Image, "data")

TYPES = (Time, Header, Image, MultiArrayDimension, MultiArrayLayout, Float32MultiArray)
# On 0.10, topic types match by name, without XTypes type information, as rmw_cyclonedds_cpp's (see _compat).
NAME_MATCHED = all([without_type_information(t) for t in (Image, Float32MultiArray)])
