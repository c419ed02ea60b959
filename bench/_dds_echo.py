"""The DDS floor for ``bench ros2``: a process that takes the bridge's place and answers every image with a
7-float action at once, no inference and no conversion. It reads the same topics with the same QoS and
types as the bridge (so it deserializes the same samples), and pairs nothing: what is left of a bridge round
trip above this echo is the bridge's own work (conversion, pairing, its thread hand-offs) plus inference.

Usage: python -m bench._dds_echo DOMAIN (runs until killed)."""

from __future__ import annotations

import sys
from typing import Any, cast


def main(domain: int) -> None:
    from cyclonedds.core import ReadCondition, SampleState, WaitSet
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from edge_runtime.ros2.config import Ros2Config
    from edge_runtime.ros2.msgs import Float32MultiArray, Image, MultiArrayDimension, MultiArrayLayout
    from edge_runtime.ros2.qos import profile

    cfg = Ros2Config(domain_id=domain)
    dp = DomainParticipant(domain)
    images = DataReader(dp, Topic(dp, cfg.image_topic, Image), qos=profile(cfg.image_qos).to_dds())
    states = DataReader(
        dp, Topic(dp, cfg.state_topic, Float32MultiArray), qos=profile(cfg.state_qos).to_dds()
    )
    writer = DataWriter(
        dp, Topic(dp, cfg.action_topic, Float32MultiArray), qos=profile(cfg.action_qos).to_dds()
    )
    waitset = WaitSet(dp)
    waitset.attach(ReadCondition(images, SampleState.NotRead))
    waitset.attach(ReadCondition(states, SampleState.NotRead))
    dims = cast(Any, [MultiArrayDimension(label="action", size=7, stride=7)])
    action = Float32MultiArray(layout=MultiArrayLayout(dim=dims), data=cast(Any, [0.0] * 7))
    print("echo: ready", flush=True)
    while True:
        waitset.wait(1_000_000_000)
        states.take(N=32)
        for _ in images.take(N=32):
            writer.write(action)


if __name__ == "__main__":
    main(int(sys.argv[1]))
