"""The adapter between the bridge and the two cyclonedds lines it supports (0.10, ROS 2 Humble's; 11):
``uint8[]`` as one ``bytes`` block, its fallback when the serializer layout is not recognised, and matched
endpoints counted through the public Listener API (0.10 has no matched-status getters).

Here it runs against the installed binding (11.x in the dev venv; 0.10.5 when PYTHONPATH points at a build
of it); the arm64 runtime image's e2e runs the bridge on 0.10.5 (tests/e2e/test_ros2_image.py).

No ``from __future__ import annotations``: cyclonedds resolves the IDL field annotations at run time.
"""

from dataclasses import dataclass

import pytest

from tests.runtime.ros2_support import CYCLONEDDS_LOOPBACK, need_cyclonedds, random_domain

need_cyclonedds(module_level=True)

from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl.types import sequence, uint8  # noqa: E402

from edge_runtime.ros2 import _compat, msgs  # noqa: E402


@dataclass
class Blob(IdlStruct, typename="edge_test::Blob"):
    data: sequence[uint8] = b""


@dataclass
class FastBlob(IdlStruct, typename="edge_test::Blob"):
    data: sequence[uint8] = b""


@dataclass
class Other(IdlStruct, typename="edge_test::Other"):
    data: sequence[uint8] = b""


def test_supported_lines_get_the_bytes_fast_path() -> None:
    version = _compat.cyclonedds_version()
    assert version.split(".")[0] in ("0", "11"), version
    assert msgs.BYTES_FAST_PATH is True
    frame = msgs.Image(height=1, width=3, encoding="mono8", step=3, data=b"\x00\x7f\xff")
    back = msgs.Image.deserialize(frame.serialize())
    assert isinstance(back.data, bytes) and back.data == b"\x00\x7f\xff"


def test_unrecognised_layout_keeps_lists_on_the_same_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _compat.use_bytes_for(FastBlob, "data") is True
    monkeypatch.setattr(_compat, "_MACHINE_ATTRS", (("no_such_machine",),))
    assert _compat.use_bytes_for(Blob, "data") is False
    slow = Blob(data=[1, 2, 250])
    fast = FastBlob(data=b"\x01\x02\xfa")
    assert slow.serialize() == fast.serialize()  # same CDR bytes either way
    back = Blob.deserialize(fast.serialize())
    assert list(back.data) == [1, 2, 250] and not isinstance(back.data, bytes)
    assert _compat.image_bytes(back.data) == b"\x01\x02\xfa"
    assert _compat.image_bytes(b"ab") == b"ab"


def test_type_information_dropped_on_010_only() -> None:
    """0.10 endpoints carry none (as rmw_cyclonedds_cpp's; 0.10 cannot resolve 11's nested type objects);
    11 refuses a topic type without it, so there it stays. Either way endpoints of one line match (the other
    tests) and a 0.10 bridge meets an 11 node (the arm64 image's e2e: 11 on the host, 0.10 in the image)."""
    on_010 = _compat.cyclonedds_version().startswith("0.")
    assert msgs.NAME_MATCHED is on_010
    for cls in (msgs.Image, msgs.Float32MultiArray):
        cls.__idl__.fill_type_data()  # what creating a Topic does
        assert (cls.__idl__._xt_bytedata == (None, None)) is on_010


def test_unknown_member_is_not_patched() -> None:
    assert _compat.use_bytes_for(Other, "pixels") is False


def test_match_count_sees_a_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from edge_runtime.ros2.qos import RELIABLE

    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONEDDS_LOOPBACK)
    dp = DomainParticipant(random_domain())
    topic = Topic(dp, "rt/edge_test/match", msgs.Float32MultiArray)
    count = _compat.MatchCount()
    writer = DataWriter(dp, topic, qos=RELIABLE.to_dds(), listener=count.listener())  # noqa: F841  (held)
    assert count.count == 0 and count.wait(0.2) is False
    reader = DataReader(dp, topic, qos=RELIABLE.to_dds())  # noqa: F841  (held)
    assert count.wait(5.0) is True and count.count == 1
