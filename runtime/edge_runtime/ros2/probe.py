"""One DDS round trip to a running ROS 2 bridge: ``python -m edge_runtime.ros2.probe``.

Publishes a request with a fresh nonce on the bridge's probe topic and waits for the reply carrying it (one
inference on a zero observation; nothing goes to the action topic). The rollout gate runs it inside the new
release's container, which shares the robot's network (host networking), so a pass means a ROS 2 node on the
robot with the same ``ROS_DOMAIN_ID``/``CYCLONEDDS_URI`` reaches the bridge too. ``--standby``: only a bridge in
standby (a hand-over's candidate, gated while the old release's bridge still serves) answers, so the gate
checks the new release's bridge, not the old one. Prints one JSON line; failure is one sentence on stderr and
exit 1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from typing import Any

from edge_runtime.errors import EdgeError

RESEND_S = 2.0  # a probe unanswered this long is written again (one inference per answer on a slow robot)


def probe(domain_id: int, timeout_s: float = 10.0, standby: bool = False) -> dict[str, Any]:
    """Round trip to the bridge on ``domain_id`` (``standby``: to a bridge in standby only): time from match
    to reply, and the reply's action size."""
    from edge_runtime.ros2._compat import MatchCount, cyclonedds_version
    from edge_runtime.ros2.bridge import PROBE_REPLY_TOPIC, PROBE_TOPIC, STANDBY, load_cyclonedds

    load_cyclonedds()
    from cyclonedds.core import DDSException, ReadCondition, SampleState, WaitSet
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from edge_runtime.ros2.msgs import Float32MultiArray, MultiArrayDimension, MultiArrayLayout
    from edge_runtime.ros2.qos import RELIABLE

    t0 = time.monotonic()
    try:
        dp = DomainParticipant(domain_id)
        matched = MatchCount()
        writer = DataWriter(
            dp, Topic(dp, PROBE_TOPIC, Float32MultiArray), qos=RELIABLE.to_dds(), listener=matched.listener()
        )
        reader = DataReader(dp, Topic(dp, PROBE_REPLY_TOPIC, Float32MultiArray), qos=RELIABLE.to_dds())
        waitset = WaitSet(dp)
        waitset.attach(ReadCondition(reader, SampleState.Any))
    except DDSException as exc:
        raise EdgeError(
            f"Cyclone DDS could not join ROS 2 domain {domain_id} (check CYCLONEDDS_URI): {exc}."
        ) from None
    try:
        if not matched.wait(timeout_s):
            raise EdgeError(
                f"No ROS 2 bridge answered on domain {domain_id} within {timeout_s:g} s (nothing subscribes to "
                f"{PROBE_TOPIC}: is the runtime serving with EDGE_ROS2=1, same ROS_DOMAIN_ID and CYCLONEDDS_URI?)."
            )
        matched_s = time.monotonic() - t0
        nonce = secrets.token_hex(8)
        dims = [MultiArrayDimension(label=nonce)] + ([MultiArrayDimension(label=STANDBY)] if standby else [])
        request = Float32MultiArray(layout=MultiArrayLayout(dim=dims), data=[])  # type: ignore[arg-type]
        sent = time.monotonic()
        writer.write(request)
        deadline, resend = sent + timeout_s, sent + RESEND_S
        while time.monotonic() < deadline:
            if time.monotonic() >= resend:
                # The first match may be another bridge (during a hand-over, the old release's, which ignores
                # a standby probe), and a reader or writer that matches later never sees a sample written
                # before it (volatile topics): the same nonce again until a reply, each RESEND_S.
                writer.write(request)
                resend = time.monotonic() + RESEND_S
            waitset.wait(int(min(0.1, max(0.001, deadline - time.monotonic())) * 1e9))
            for sample in reader.take(N=16):
                reply: Any = sample  # cyclonedds's IDL sequences are not typed for mypy
                dims = list(reply.layout.dim)
                if dims and dims[0].label == nonce:
                    return {
                        "ok": True,
                        "domain_id": domain_id,
                        "match_s": round(matched_s, 3),
                        "round_trip_ms": round((time.monotonic() - sent) * 1000, 2),
                        "action": dims[1].label if len(dims) > 1 else "",
                        "action_size": len(reply.data),
                        "standby": standby,
                        "cyclonedds": cyclonedds_version(),
                    }
        raise EdgeError(
            f"The ROS 2 bridge on domain {domain_id} matched but did not answer the probe within {timeout_s:g} s "
            "(see the runtime's log for the inference error)."
        )
    finally:
        dp.__del__()  # leave the domain now, not at GC time


def main(argv: list[str] | None = None) -> int:
    from edge_runtime.ros2.config import Ros2Config

    ap = argparse.ArgumentParser(
        prog="python -m edge_runtime.ros2.probe", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the match, then the reply"
    )
    ap.add_argument(
        "--standby", action="store_true", help="only a bridge in standby (a hand-over's candidate) answers"
    )
    args = ap.parse_args(argv)
    try:
        if not 0 < args.timeout <= 600:
            raise EdgeError(f"--timeout {args.timeout:g} must be between 0 and 600 seconds.")
        result = probe(Ros2Config.from_env().domain_id, args.timeout, standby=args.standby)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
