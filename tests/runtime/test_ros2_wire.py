"""The ROS 2 message types on the wire: type names as rmw_cyclonedds_cpp registers them and CDR bytes
written out by hand from the .msg definitions (field order, alignment, string and sequence lengths)."""

from __future__ import annotations

import struct

import pytest

from tests.runtime.ros2_support import need_cyclonedds

need_cyclonedds(module_level=True)

from edge_runtime.ros2 import msgs  # noqa: E402


def test_type_names_follow_rmw_cyclonedds() -> None:
    names = {cls.__name__: cls.__idl_typename__ for cls in msgs.TYPES}
    assert names == {
        "Time": "builtin_interfaces::msg::dds_::Time_",
        "Header": "std_msgs::msg::dds_::Header_",
        "Image": "sensor_msgs::msg::dds_::Image_",
        "MultiArrayDimension": "std_msgs::msg::dds_::MultiArrayDimension_",
        "MultiArrayLayout": "std_msgs::msg::dds_::MultiArrayLayout_",
        "Float32MultiArray": "std_msgs::msg::dds_::Float32MultiArray_",
    }


def test_image_cdr_bytes() -> None:
    msg = msgs.Image(
        header=msgs.Header(stamp=msgs.Time(sec=5, nanosec=7), frame_id="cam"),
        height=1,
        width=2,
        encoding="mono8",
        is_bigendian=0,
        step=2,
        data=b"\x01\x02",
    )
    # fmt: off
    body = (
        struct.pack("<iI", 5, 7)            # header.stamp
        + struct.pack("<I", 4) + b"cam\0"   # header.frame_id
        + struct.pack("<II", 1, 2)          # height, width
        + struct.pack("<I", 6) + b"mono8\0"  # encoding
        + b"\x00" + b"\x00"                 # is_bigendian, then padding to 4
        + struct.pack("<I", 2)              # step
        + struct.pack("<I", 2) + b"\x01\x02"  # data: uint8[]
    )
    # fmt: on
    wire = msg.serialize(use_version_2=False)
    assert wire[:2] == b"\x00\x01"  # CDR little endian (plain CDR, as ROS 2 Humble sends)
    assert wire[4 : 4 + len(body)] == body
    back = msgs.Image.deserialize(wire)
    assert back == msg and isinstance(back.data, bytes)


def test_float32_multiarray_cdr_bytes() -> None:
    msg = msgs.Float32MultiArray(
        layout=msgs.MultiArrayLayout(dim=[msgs.MultiArrayDimension("action", 2, 2)], data_offset=0),
        data=[1.0, -2.5],
    )
    # fmt: off
    body = (
        struct.pack("<I", 1)                                  # dim: 1 element
        + struct.pack("<I", 7) + b"action\0" + b"\0"          # label, padding
        + struct.pack("<II", 2, 2)                            # size, stride
        + struct.pack("<I", 0)                                # data_offset
        + struct.pack("<I", 2) + struct.pack("<ff", 1.0, -2.5)  # data: float32[]
    )
    # fmt: on
    wire = msg.serialize(use_version_2=False)
    assert wire[:2] == b"\x00\x01" and wire[4 : 4 + len(body)] == body
    assert msgs.Float32MultiArray.deserialize(wire) == msg


def test_large_image_round_trips_as_bytes() -> None:
    data = bytes(range(256)) * 1800  # a 640x240 rgb8 frame
    msg = msgs.Image(height=240, width=640, encoding="rgb8", step=1920, data=data)
    assert msgs.Image.deserialize(msg.serialize(use_version_2=False)).data == data


def test_only_plain_cdr_endpoints_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our QoS pins XCDR1 as rmw_cyclonedds_cpp does; a writer offering only XCDR2 is not matched."""

    from cyclonedds.core import Policy
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.qos import Qos
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from edge_runtime.ros2._compat import MatchCount
    from edge_runtime.ros2.qos import RELIABLE
    from tests.runtime.ros2_support import CYCLONEDDS_LOOPBACK, random_domain

    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONEDDS_LOOPBACK)
    dp = DomainParticipant(random_domain())
    topic = Topic(dp, "rt/policy/action", msgs.Float32MultiArray)
    reader = DataReader(dp, topic, qos=RELIABLE.to_dds())  # noqa: F841  (held: deleted when dropped)
    xcdr2 = Qos(Policy.Reliability.Reliable(0), Policy.DataRepresentation(use_xcdrv2_representation=True))

    def matched(qos: object) -> int:
        count = MatchCount()
        writer = DataWriter(dp, topic, qos=qos, listener=count.listener())  # noqa: F841  (held)
        count.wait(1.0)
        return count.count

    assert matched(RELIABLE.to_dds()) == 1
    assert matched(xcdr2) == 0
