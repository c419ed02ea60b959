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
from typing import Any

from cyclonedds.idl import IdlStruct
from cyclonedds.idl._machinery import BytesMachine
from cyclonedds.idl.types import float32, int32, sequence, uint8, uint32


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
    """sensor_msgs/msg/Image. ``data`` travels as ``uint8[]``; in Python it is ``bytes`` (see below)."""

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


def _bytes_for_uint8_sequence(cls: Any, member: str) -> None:
    """Let a ``uint8[]`` member (de)serialize as one ``bytes`` block instead of a list of ints.

    The CDR encoding is identical (aligned uint32 length, then the raw bytes) and the declared type, and so
    the XTypes type information, stays ``sequence<uint8>``; only the Python value changes. A 640x480 rgb8
    frame then costs one copy instead of a 900 k-element list (about 7x faster measured here).
    """
    idl = cls.__idl__
    idl.populate()
    for machine in (idl.v1_machine, idl.v2_machine):
        machine.members_machines[member] = BytesMachine()


_bytes_for_uint8_sequence(Image, "data")

TYPES = (Time, Header, Image, MultiArrayDimension, MultiArrayLayout, Float32MultiArray)
