"""Actions lost and duplicated while a ROS 2 robot's release hands over (the ``hand-over`` update strategy).

Two real ``edge-runtime serve --ros2`` processes on this host, as edge-update.sh runs them on a robot: the
old one serves; the new one starts beside it with ``EDGE_HANDOVER_PORT`` (a hand-over candidate: its bridge
in standby), is gated on that port for ``--handover-gate-s``, gets SIGUSR1 (takeover), and the old one gets
SIGTERM once the handover port closed. A DDS peer in this process publishes a numbered observation (robot
state + an 8×8 image, stamped) at ``--handover-hz`` throughout and counts the actions per observation: the
model is linear, so each action maps back to exactly one observation (its expected action is computed here
with the same backend). Per hand-over: observations with no action and with two or more, before the takeover
(the standby must add none), across the switch (SIGUSR1 − 0.2 s to the old process's exit + 0.2 s) and after,
the longest gap between two actions, and the bridges' own drop counters. Loopback DDS only, multicast off,
a random domain id; no Docker.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import free_port
from bench.ros2 import CYCLONEDDS_LOOPBACK, REPO

NAME = "ros2_handover"
IMAGE_HW = 8
STATE_SIZE = 48
SWITCH_MARGIN_S = 0.2  # the switch window reaches this far before SIGUSR1 and past the old process's exit
TAIL_S = 0.3  # the last observations' actions may still be in flight when streaming stops: not judged


def write_bundle(root: Path) -> Path:
    """A linear policy on an 8×8 image and the 48-float state: cheap, and each state gives its own action."""
    from tests.runtime.bundles import write_linear_bundle

    rng = np.random.default_rng(7)
    weight = rng.standard_normal((3 + STATE_SIZE, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    return write_linear_bundle(root, weight, bias, image_hw=IMAGE_HW, name="handover", producer="edge-bench")


def state_of(seq: int) -> np.ndarray:
    return np.random.default_rng(seq).standard_normal(STATE_SIZE).astype(np.float32)


class ActionIndex:
    """Which observation an action answers: the nearest expected action (image zero, state ``state_of``)."""

    def __init__(self, bundle: Path, n: int) -> None:
        from edge_runtime.backends import BuildOptions, get_backend
        from edge_runtime.bundle import ModelBundle

        b = ModelBundle.load(bundle)
        backend = get_backend("onnxruntime")
        options = BuildOptions(batch=b.manifest.batch)
        engine = backend.load(backend.build(b, options), b, options)
        image = np.zeros((1, 3, IMAGE_HW, IMAGE_HW), np.float32)
        self.expected = np.stack(
            [engine.infer({"image": image, "robot_state": state_of(i)[None]})["action"][0] for i in range(n)]
        )

    def seq(self, action: np.ndarray) -> int | None:
        d = np.abs(self.expected - action[None]).max(axis=1)
        i = int(d.argmin())
        return i if d[i] < 1e-3 else None


def dds_env(domain: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CYCLONEDDS_URI=CYCLONEDDS_LOOPBACK, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "runtime"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@dataclass
class ObservationPeer:
    """The robot's camera and state publisher plus an action subscriber, in this process (two threads)."""

    domain: int
    hz: float
    sent: list[tuple[int, float]] = field(default_factory=list)  # (seq, stamp: wall clock)
    actions: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, wall clock; data)

    def __post_init__(self) -> None:
        # This process's Cyclone DDS reads its settings when it first joins a domain: loopback, as the services
        os.environ["CYCLONEDDS_URI"] = CYCLONEDDS_LOOPBACK
        from cyclonedds.core import ReadCondition, SampleState, WaitSet
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        from edge_runtime.ros2._compat import MatchCount
        from edge_runtime.ros2.config import Ros2Config
        from edge_runtime.ros2.msgs import Float32MultiArray, Image
        from edge_runtime.ros2.qos import SENSOR_DATA, QosProfile

        cfg = Ros2Config()
        self.dp = DomainParticipant(self.domain)
        self.matches = [MatchCount(), MatchCount(), MatchCount()]
        self.image_w = DataWriter(
            self.dp,
            Topic(self.dp, cfg.image_topic, Image),
            qos=SENSOR_DATA.to_dds(),
            listener=self.matches[0].listener(),
        )
        self.state_w = DataWriter(
            self.dp,
            Topic(self.dp, cfg.state_topic, Float32MultiArray),
            qos=SENSOR_DATA.to_dds(),
            listener=self.matches[1].listener(),
        )
        self.reader = DataReader(
            self.dp,
            Topic(self.dp, cfg.action_topic, Float32MultiArray),
            # reliable, as the bridge's writer; a deep history, so that a late receiver thread loses nothing
            qos=QosProfile("reliable", reliable=True, depth=1000).to_dds(),
            listener=self.matches[2].listener(),
        )
        self.waitset = WaitSet(self.dp)
        self.waitset.attach(ReadCondition(self.reader, SampleState.Any))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def wait_matched(self, bridges: int, timeout_s: float = 60.0) -> None:
        for m in self.matches:
            if not m.wait(timeout_s, at_least=bridges):
                raise RuntimeError(f"the DDS peer did not match {bridges} bridge(s) within {timeout_s:g} s")

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._publish, name="peer-publish", daemon=True),
            threading.Thread(target=self._receive, name="peer-receive", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self.dp.__del__()

    def _publish(self) -> None:
        from edge_runtime.ros2.msgs import (
            Float32MultiArray,
            Header,
            Image,
            MultiArrayDimension,
            MultiArrayLayout,
            Time,
        )

        pixels = np.zeros((IMAGE_HW, IMAGE_HW, 3), np.uint8).tobytes()
        start, seq = time.monotonic(), 0
        while not self._stop.is_set():
            state = state_of(seq)
            dim = MultiArrayDimension(label="state", size=STATE_SIZE, stride=STATE_SIZE)
            self.state_w.write(Float32MultiArray(layout=MultiArrayLayout(dim=[dim]), data=state.tolist()))  # type: ignore[arg-type]
            t = time.time()
            header = Header(stamp=Time(sec=int(t), nanosec=int((t % 1) * 1e9)), frame_id="camera")
            image = Image(
                header=header,
                height=IMAGE_HW,
                width=IMAGE_HW,
                encoding="rgb8",
                is_bigendian=0,
                step=IMAGE_HW * 3,
                data=pixels,  # type: ignore[arg-type]
            )
            self.image_w.write(image)
            self.sent.append((seq, t))
            seq += 1
            time.sleep(max(0.0, start + seq / self.hz - time.monotonic()))

    def _receive(self) -> None:
        while not self._stop.is_set():
            self.waitset.wait(50_000_000)
            for s in self.reader.take(N=64):
                if hasattr(s, "data"):
                    self.actions.append((time.time(), np.asarray(s.data, np.float32)))


def metric(url: str, name: str) -> float:
    """Sum of a Prometheus series' samples whose line starts with ``name`` (0 when absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def serve(bundle: Path, cache: Path, port: int, handover: int, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle), "--cache", str(cache)]
    cmd += ["--backend", "onnxruntime", "--port", str(port), "--drain-s", "5", "--ros2", "--warmup", "1"]
    return subprocess.Popen(
        cmd,
        env={**env, "EDGE_HANDOVER_PORT": str(handover)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(port: int, proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-runtime serve exited: {proc.communicate()[0][-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing ready on port {port} within {timeout_s:g} s")


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[str], timeout_s: float = 30) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def handover_once(
    bundle: Path, work: Path, hz: float = 50.0, gate_s: float = 1.0, after_s: float = 1.0
) -> dict[str, Any]:
    """One hand-over with the peer streaming throughout; the counts of ``judge`` plus the process facts."""
    domain = random.SystemRandom().randint(100, 200)
    env = dds_env(domain, EDGE_ROS2_MAX_RATE_HZ="1000")
    port, handover = free_port(), free_port()
    old = serve(bundle, work / "cache", port, handover, env)
    new: subprocess.Popen[str] | None = None
    peer: ObservationPeer | None = None
    facts: dict[str, Any] = {}
    try:
        wait_ready(port, old)
        peer = ObservationPeer(domain, hz)
        peer.wait_matched(1)
        peer.start()
        time.sleep(0.5)
        new = serve(bundle, work / "cache", port, handover, env)
        wait_ready(handover, new)
        peer.wait_matched(2)
        time.sleep(gate_s)  # the operator's gate: discovery between the bridges completes meanwhile
        gate_url = f"http://127.0.0.1:{handover}"
        facts["standby_actions"] = metric(gate_url, "edge_ros2_actions_total")
        facts["standby_suppressed"] = metric(gate_url, 'edge_ros2_suppressed_actions_total{reason="standby"}')
        facts["standby_active_gauge"] = metric(gate_url, "edge_ros2_active")
        facts["takeover"] = time.time()
        new.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while listening(handover) and time.monotonic() < deadline:
            time.sleep(0.01)
        facts["old_log"] = stop(old)
        facts["old_exit"] = time.time()
        facts["old_returncode"] = old.returncode
        time.sleep(after_s)
        facts["new_dropped"] = metric(f"http://127.0.0.1:{port}", "edge_ros2_dropped_frames_total")
        facts["new_actions"] = metric(f"http://127.0.0.1:{port}", "edge_ros2_actions_total")
        peer.stop()
        sent, actions = list(peer.sent), list(peer.actions)
        peer = None
    finally:
        if peer is not None:
            peer.stop()
        stop(old)
        if new is not None:
            facts["new_log"] = stop(new)
    index = ActionIndex(bundle, len(sent) + 1)
    return facts | judge(sent, actions, index, facts["takeover"], facts["old_exit"])


def judge(
    sent: list[tuple[int, float]],
    actions: list[tuple[float, np.ndarray]],
    index: ActionIndex,
    takeover: float,
    old_exit: float,
) -> dict[str, Any]:
    """Actions per observation, by phase (stamp before the switch window, in it, after it)."""
    answers = np.zeros(len(sent), int)
    unknown = 0
    for _, data in actions:
        seq = index.seq(data)
        if seq is None or seq >= len(sent):
            unknown += 1
        else:
            answers[seq] += 1
    first_answered = int(np.argmax(answers > 0)) if answers.any() else len(sent)
    end = sent[-1][1] - TAIL_S if sent else 0.0
    out: dict[str, Any] = {"observations": 0, "unknown_actions": unknown}
    phases = {
        "before": lambda t: t < takeover - SWITCH_MARGIN_S,
        "switch": lambda t: takeover - SWITCH_MARGIN_S <= t <= old_exit + SWITCH_MARGIN_S,
        "after": lambda t: old_exit + SWITCH_MARGIN_S < t <= end,
    }
    for phase, inside in phases.items():
        seqs = [seq for seq, t in sent if seq >= first_answered and inside(t)]
        got = answers[seqs] if seqs else np.zeros(0, int)
        out[f"{phase}_observations"] = len(seqs)
        out[f"{phase}_lost"] = int((got == 0).sum())
        out[f"{phase}_duplicated"] = int((got >= 2).sum())
        out["observations"] += len(seqs)
    arrivals = sorted(t for t, _ in actions if takeover - 1.0 <= t <= end)
    out["longest_gap_s"] = round(float(np.diff(arrivals).max()), 4) if len(arrivals) > 1 else None
    out["switch_s"] = round(old_exit - takeover, 3)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ros2_handover")
    g.add_argument("--handovers", type=int, default=5, help="ros2_handover: hand-overs to run (default 5)")
    g.add_argument("--handover-hz", type=float, default=50.0, help="ros2_handover: observation rate")
    g.add_argument("--handover-gate-s", type=float, default=1.0, help="ros2_handover: gate time in standby")


def run(args: Any = None) -> dict[str, Any]:
    try:
        import cyclonedds  # noqa: F401
    except ImportError:
        raise SystemExit("cyclonedds is not installed (the ros2 extra)") from None
    n = int(getattr(args, "handovers", None) or 5)
    hz = float(getattr(args, "handover_hz", None) or 50.0)
    gate_s = float(getattr(args, "handover_gate_s", None) or 1.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-ros2-handover-") as tmp:
        bundle = write_bundle(Path(tmp) / "bundle")
        for i in range(n):
            r = handover_once(bundle, Path(tmp), hz=hz, gate_s=gate_s)
            rows.append(
                {
                    "run": i + 1,
                    "observations": r["observations"],
                    "standby_actions": int(r["standby_actions"]),
                    "before_lost": r["before_lost"],
                    "before_dup": r["before_duplicated"],
                    "switch_obs": r["switch_observations"],
                    "switch_lost": r["switch_lost"],
                    "switch_dup": r["switch_duplicated"],
                    "after_lost": r["after_lost"],
                    "after_dup": r["after_duplicated"],
                    "longest_gap_ms": round((r["longest_gap_s"] or 0) * 1000, 1),
                    "switch_s": r["switch_s"],
                    "new_dropped": int(r["new_dropped"]),
                    "unknown": r["unknown_actions"],
                }
            )
    total = {
        k: sum(int(r[k]) for r in rows) for k in ("switch_lost", "switch_dup", "after_lost", "after_dup")
    }
    return {
        "hz": hz,
        "handovers": n,
        "lost_total": total["switch_lost"] + total["after_lost"] + sum(r["before_lost"] for r in rows),
        "duplicated_total": total["switch_dup"] + total["after_dup"] + sum(r["before_dup"] for r in rows),
        "longest_gap_ms": max(r["longest_gap_ms"] for r in rows),
        "rows": rows,
    }
