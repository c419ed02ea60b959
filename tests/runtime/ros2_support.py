"""Shared set-up for the ROS 2 tests: loopback-only Cyclone DDS, a fresh domain id, the peer process."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import IN_CI, need

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("ros2_peer.py")

# Loopback only, no multicast: discovery goes by unicast to the participant ports on 127.0.0.1, so no DDS
# packet leaves the machine. ParticipantIndex auto is needed for unicast discovery of several processes.
CYCLONEDDS_LOOPBACK = (
    '<CycloneDDS><Domain id="any"><General><Interfaces><NetworkInterface name="lo"/></Interfaces>'
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>20</MaxAutoParticipantIndex>"
    '<Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>'
)


def random_domain() -> int:
    """A domain id of its own per test run, so parallel runs on one host do not hear each other."""
    return random.SystemRandom().randint(100, 200)


def dds_env(domain: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CYCLONEDDS_URI=CYCLONEDDS_LOOPBACK, ROS_DOMAIN_ID=str(domain))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "runtime"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def start_peer(domain: int, out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(PEER), "--domain", str(domain), "--out", str(out), *args]
    return subprocess.Popen(cmd, env=dds_env(domain), cwd=REPO, stderr=subprocess.PIPE, text=True)


def finish_peer(proc: subprocess.Popen[str], timeout_s: float = 90.0) -> str:
    """Wait for the peer (bounded), kill it if it overruns; returns its stderr."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"ROS 2 peer overran {timeout_s}s: {err}") from None
    return err


def expected_feeds(image_hwc_rgb8: np.ndarray, state: np.ndarray) -> dict[str, np.ndarray]:
    """What the model should get for an rgb8 frame at the model's size: NCHW float32 in [0, 1]."""
    return {
        "image": (image_hwc_rgb8.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy(),
        "robot_state": state.astype(np.float32)[None],
    }


def cyclonedds_importable() -> bool:
    try:
        import cyclonedds  # noqa: F401
    except ImportError:
        return False
    return True


def need_cyclonedds(module_level: bool = False) -> None:
    """Skip without cyclonedds on a developer machine; under CI=true its absence is a failure."""
    if module_level and not cyclonedds_importable() and not IN_CI:
        pytest.skip("prerequisite missing: cyclonedds (fails under CI=true)", allow_module_level=True)
    need(cyclonedds_importable(), "cyclonedds (the ros2 extra)")
