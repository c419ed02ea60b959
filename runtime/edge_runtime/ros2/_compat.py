"""The one place the bridge reaches below cyclonedds's public API: ``uint8[]`` as one ``bytes`` block, and
no XTypes type information on our endpoints (``without_type_information``, as ROS 2's rmw does).

cyclonedds has no public switch for this, and its serializer internals differ between the two lines we
support: 0.10.x (what ROS 2 Humble ships, built from source for the arm64 image) keeps the plain-CDR machine
as ``v0_machine``; 11.x calls it ``v1_machine``. Both keep the XCDR2 machine as ``v2_machine`` and a
``BytesMachine`` in ``cyclonedds.idl._machinery``. On any other layout the adapter does nothing and the
member stays a list of ints: same bytes on the wire, only slower (``image_bytes`` accepts both), and
``bytes_fast_path`` says which one is in use. Tested under 0.10.5 and 11.0.1 (tests/runtime/test_ros2_compat.py).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Plain-CDR machine attribute per line (0.10: v0_machine, 11: v1_machine), then the XCDR2 one.
_MACHINE_ATTRS = (("v0_machine", "v1_machine"), ("v2_machine",))


def cyclonedds_version() -> str:
    """The installed binding's version (its distribution metadata; 0.10 has no ``__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cyclonedds")
    except PackageNotFoundError:  # imported from a source tree
        import cyclonedds

        return str(getattr(cyclonedds, "__version__", "unknown"))


def use_bytes_for(cls: Any, member: str) -> bool:
    """Let ``cls.member`` (declared ``sequence[uint8]``) (de)serialize as one ``bytes`` value.

    The CDR encoding is identical (aligned uint32 length, then the raw bytes) and the declared type, and so
    the XTypes type information, stays ``sequence<uint8>``; only the Python value changes (a 640x480 rgb8
    frame costs one copy instead of a 900 k-element list, about 7x faster). Returns whether it applied.
    """
    try:
        from cyclonedds.idl import _machinery

        bytes_machine = getattr(_machinery, "BytesMachine", None)
    except ImportError:
        bytes_machine = None
    idl = getattr(cls, "__idl__", None)
    if bytes_machine is None or idl is None or not hasattr(idl, "populate"):
        log.debug("cyclonedds %s: no bytes fast path for %s.%s", cyclonedds_version(), cls.__name__, member)
        return False
    idl.populate()
    machines = []
    for names in _MACHINE_ATTRS:
        found = [getattr(idl, n) for n in names if getattr(idl, n, None) is not None]
        if not found or not isinstance(getattr(found[0], "members_machines", None), dict):
            log.debug("cyclonedds %s: serializer layout not recognised", cyclonedds_version())
            return False
        if member not in found[0].members_machines:
            return False
        machines.append(found[0])
    for machine in machines:
        machine.members_machines[member] = bytes_machine()
    return True


def without_type_information(cls: Any) -> bool:
    """On cyclonedds 0.10, make endpoints of ``cls`` carry no XTypes type information, as the endpoints of
    ``rmw_cyclonedds_cpp`` on Humble do: Cyclone DDS then matches them by type name and data representation.

    Needed beyond fidelity: 0.10 cannot resolve the type objects 11 sends for nested structs (``Image`` holds
    a ``Header`` holding a ``Time``; 0.10 logs "invalid type object" and never matches), so a 0.10 bridge and
    an 11 node would not meet. An endpoint without type information is matched by name on both lines. 11
    refuses to create a topic whose type has none, so there the types keep theirs (0.10 and 11 peers then
    still meet through the 0.10 side). Both lines create the type data once (``fill_type_data``) and hand
    ``_xt_bytedata`` to the C layer at topic creation; with ``(None, None)`` it attaches none. Returns
    whether it applied.
    """
    idl = getattr(cls, "__idl__", None)
    if (
        not cyclonedds_version().startswith("0.")  # 11 refuses to create a topic whose type has none
        or idl is None
        or not hasattr(idl, "fill_type_data")
        or not hasattr(idl, "_xt_bytedata")
    ):
        log.debug("cyclonedds %s: type information of %s left as is", cyclonedds_version(), cls.__name__)
        return False
    idl.fill_type_data()  # once: later topic creations keep what is set below
    idl._xt_bytedata = (None, None)
    return True


def image_bytes(data: Any) -> bytes | bytearray | memoryview:
    """``Image.data`` as a buffer, whether the fast path gave ``bytes`` or the binding a list of ints."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    return bytes(data)


class MatchCount:
    """How many remote endpoints an endpoint matches, through a ``Listener`` (public in 0.10 and 11).

    cyclonedds 11 has ``get_publication_matched_status()``; 0.10 (Humble's) has no getter, only the
    listener callback. Pass ``listener()`` when creating the DataWriter/DataReader and read ``count``.
    """

    def __init__(self) -> None:
        self.count = 0
        self._listener: Any = None

    def listener(self) -> Any:
        """The ``cyclonedds.core.Listener`` that keeps ``count`` up to date (kept alive by this object)."""
        if self._listener is None:
            from cyclonedds.core import Listener

            self._listener = Listener(on_publication_matched=self._on, on_subscription_matched=self._on)
        return self._listener

    def _on(self, _entity: Any, status: Any) -> None:
        self.count = int(status.current_count)

    def wait(self, timeout_s: float, at_least: int = 1) -> bool:
        """Wait until ``count`` ≥ ``at_least``; whether it got there within ``timeout_s``."""
        import time

        deadline = time.monotonic() + timeout_s
        while self.count < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count >= at_least
