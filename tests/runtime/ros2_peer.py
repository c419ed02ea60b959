"""Second process for the ROS 2 tests: a stand-in for a ROS 2 camera driver and robot-state publisher.

It joins the DDS domain the way ``rmw_cyclonedds_cpp`` would (``rt/`` topics, ROS 2 type names, sensor-data
QoS for the camera, reliable for the state and for the action subscription), waits until the bridge is
matched, optionally sends bad messages first, then runs ``--rounds`` rounds of state + image → action and
writes what it sent and received to ``--out`` (npz). Every wait is bounded; exit 3 means no bridge matched.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from edge_runtime.ros2._compat import MatchCount
from edge_runtime.ros2.msgs import (
    Float32MultiArray,
    Header,
    Image,
    MultiArrayDimension,
    MultiArrayLayout,
    Time,
)
from edge_runtime.ros2.qos import RELIABLE, SENSOR_DATA


def stamp_now() -> Time:
    t = time.time()
    return Time(sec=int(t), nanosec=int((t % 1) * 1e9))


def image_msg(pixels: np.ndarray, encoding: str, **override: object) -> Image:
    h, w = pixels.shape[:2]
    data = pixels.tobytes()
    fields: dict[str, object] = dict(
        header=Header(stamp=stamp_now(), frame_id="camera"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=len(data) // h,
        data=data,
    )
    fields.update(override)
    return Image(**fields)  # type: ignore[arg-type]


def state_msg(values: np.ndarray) -> Float32MultiArray:
    dim = MultiArrayDimension(label="state", size=values.size, stride=values.size)
    return Float32MultiArray(layout=MultiArrayLayout(dim=[dim], data_offset=0), data=values.tolist())


def stream(
    args: argparse.Namespace, image_writer: DataWriter, state_writer: DataWriter, reader: DataReader
) -> int:
    """Publish state + image at ``--hz`` for ``--stream-s`` seconds, like a live camera; count the actions."""
    pixels = np.zeros((args.height, args.width, 3), dtype=np.uint8)
    state = np.zeros(args.state_size, dtype=np.float32)
    sent = received = 0
    start = time.monotonic()
    while (now := time.monotonic()) < start + args.stream_s:
        state_writer.write(state_msg(state))
        image_writer.write(image_msg(pixels, "rgb8"))
        sent += 1
        received += sum(hasattr(s, "data") for s in reader.take(N=64))
        time.sleep(max(0.0, start + sent / args.hz - now))
    time.sleep(0.3)  # the last actions in flight
    received += sum(hasattr(s, "data") for s in reader.take(N=64))
    np.savez(args.out, sent=sent, actions=received, seconds=time.monotonic() - start)
    print(f"peer: streamed {sent} frames, {received} actions", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--state-size", type=int, default=48)
    ap.add_argument("--bad", default="", help="comma list sent before the rounds: encoding,size,state_size")
    ap.add_argument("--image-topic", default="rt/camera/image_raw")
    ap.add_argument("--state-topic", default="rt/robot/state")
    ap.add_argument("--action-topic", default="rt/policy/action")
    ap.add_argument("--match-timeout", type=float, default=20.0)
    ap.add_argument("--action-timeout", type=float, default=5.0)
    ap.add_argument(
        "--gap", type=float, default=0.15, help="pause between rounds, longer than the sync window"
    )
    ap.add_argument("--stream-s", type=float, default=0.0, help="instead of rounds: stream for this long")
    ap.add_argument("--hz", type=float, default=60.0, help="camera rate when streaming")
    args = ap.parse_args()

    dp = DomainParticipant(args.domain)
    # matches counted through listeners: cyclonedds 0.10 (Humble's) has no matched-status getters
    matches = [MatchCount(), MatchCount(), MatchCount()]
    image_writer = DataWriter(
        dp, Topic(dp, args.image_topic, Image), qos=SENSOR_DATA.to_dds(), listener=matches[0].listener()
    )
    state_writer = DataWriter(
        dp,
        Topic(dp, args.state_topic, Float32MultiArray),
        qos=RELIABLE.to_dds(),
        listener=matches[1].listener(),
    )
    action_reader = DataReader(
        dp,
        Topic(dp, args.action_topic, Float32MultiArray),
        qos=RELIABLE.to_dds(),
        listener=matches[2].listener(),
    )
    waitset = WaitSet(dp)
    waitset.attach(ReadCondition(action_reader, SampleState.Any | ViewState.Any | InstanceState.Any))

    deadline = time.monotonic() + args.match_timeout
    while time.monotonic() < deadline:
        if all(m.count for m in matches):
            break
        time.sleep(0.05)
    else:
        print("peer: no bridge matched", file=sys.stderr)
        return 3
    print("peer: matched", file=sys.stderr, flush=True)
    time.sleep(0.2)  # let the bridge's side of the match settle too

    small = np.zeros((8, 8, 3), dtype=np.uint8)  # bad frames are small: one datagram, so none is lost
    for kind in filter(None, args.bad.split(",")):
        if kind == "encoding":
            image_writer.write(image_msg(small, "yuv422"))
        elif kind == "size":
            image_writer.write(image_msg(small, "rgb8", data=small.tobytes()[:-10]))
        elif kind == "state_size":
            state_writer.write(state_msg(np.zeros(args.state_size + 3, dtype=np.float32)))
        else:
            raise SystemExit(f"unknown bad kind {kind}")
        time.sleep(0.05)

    if args.stream_s > 0:
        return stream(args, image_writer, state_writer, action_reader)

    rng = np.random.default_rng(1234)
    images, states, actions, tries, rtts = [], [], [], [], []
    for _ in range(args.rounds):
        pixels = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        state = rng.standard_normal(args.state_size).astype(np.float32)
        action, attempt = None, 0
        # The camera topic is best effort: a frame may be lost, so resend it (at most 3 times).
        while action is None and attempt < 3:
            attempt += 1
            action_reader.take(N=64)
            state_writer.write(state_msg(state))
            time.sleep(0.005)
            image_writer.write(image_msg(pixels, "rgb8"))
            sent = time.monotonic()
            end = sent + args.action_timeout
            while action is None and time.monotonic() < end:
                waitset.wait(duration(seconds=max(0.001, min(0.1, end - time.monotonic()))))
                got = [s for s in action_reader.take(N=64) if hasattr(s, "data")]
                if got:
                    action = np.asarray(got[-1].data, dtype=np.float32)
                    rtt = time.monotonic() - sent
            if action is None:
                time.sleep(args.gap)
        if action is None:
            print("peer: no action received", file=sys.stderr)
            break
        images.append(pixels)
        states.append(state)
        actions.append(action)
        tries.append(attempt)
        rtts.append(rtt)
        time.sleep(args.gap)
    np.savez(
        args.out,
        images=np.array(images, dtype=np.uint8).reshape(-1, args.height, args.width, 3),
        states=np.array(states, dtype=np.float32).reshape(-1, args.state_size),
        actions=np.array(actions, dtype=np.float32),
        tries=np.array(tries),
        rtt_s=np.array(rtts),  # image written → action taken, as this process sees it
    )
    print(f"peer: {len(actions)}/{args.rounds} rounds", file=sys.stderr)
    return 0 if len(actions) == args.rounds else 4


if __name__ == "__main__":
    sys.exit(main())
