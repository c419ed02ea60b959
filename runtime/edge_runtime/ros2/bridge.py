"""Ros2Bridge: serve the policy to ROS 2 nodes over DDS topics, with the wire conventions of ``rmw_cyclonedds_cpp``.

It subscribes to a camera topic (``sensor_msgs/Image``) and a robot-state topic (``std_msgs/Float32MultiArray``),
pairs the newest image with the newest state that arrived within the sync window, drops frames that went
stale, runs the model at most ``max_rate_hz`` times a second and publishes the action
(``std_msgs/Float32MultiArray``). A bad message is counted and logged, never fatal. One thread does all of
this, waking at least every 100 ms so ``stop()`` is prompt.

It also answers probes (``edge_runtime.ros2.probe``, the rollout gate's DDS check) on topics of its own: a
request on ``PROBE_TOPIC`` gets one inference on a zero observation, answered on ``PROBE_REPLY_TOPIC`` and
never on the action topic, so a probe on a working robot moves nothing.

Hand-over (the ``hand-over`` update strategy, docs/fleet.md): a bridge started beside a running release comes
up in **standby**: its participant, readers and action writer exist (so discovery with the robot's nodes is
done while the operator's gate runs) and it answers probes, but it publishes no action. ``take_over()`` (the
service's SIGUSR1) picks an instant ``at`` = now + ``HANDOVER_LEAD_S`` and announces it on
``HANDOVER_TOPIC``: from then on the new bridge answers only observations stamped at or after ``at``, and the
old bridge, told before ``at`` arrives, only those stamped before it. Each observation carries one stamp both
bridges read alike, so each is answered by exactly one release: no duplicate, no loss, provided the
announcement reaches the old bridge within the lead (loopback DDS: about a millisecond). On SIGTERM
(``quiesce()``, before the HTTP drain) the old bridge keeps its share up to ``at`` and no more; with no
successor announced it stops publishing at once, so two bridges overlap at most between the two signals.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.bundle import TensorSpec
from edge_runtime.errors import BackendUnavailable, EdgeError
from edge_runtime.ros2._compat import MatchCount, cyclonedds_version
from edge_runtime.ros2.config import Ros2Config
from edge_runtime.ros2.convert import BadMessage, ImageInput, VectorInput, check_image, to_float32_multiarray
from edge_runtime.ros2.qos import profile

log = logging.getLogger(__name__)

Infer = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

MAX_WAIT_S = 0.1  # longest the bridge thread blocks, so stop() returns within about this
TAKE_BATCH = 32
LOG_EVERY_S = 10.0  # a repeated bad-message reason is logged at most this often (all are counted)
# The probe's topics (ROS names /edge_runtime/probe and /edge_runtime/probe_reply), reliable QoS.
PROBE_TOPIC = "rt/edge_runtime/probe"
PROBE_REPLY_TOPIC = "rt/edge_runtime/probe_reply"
STANDBY = "standby"  # a probe request's second label: only a bridge in standby answers it
# Hand-over: the new bridge announces here the instant from which it answers (ROS /edge_runtime/handover).
HANDOVER_TOPIC = "rt/edge_runtime/handover"
HANDOVER_LEAD_S = 0.05  # how far ahead the takeover instant is set, so the old bridge hears it in time
HANDOVER_GRACE_S = 0.1  # after ``at``, how long a stopping old bridge still waits for its last observations
# Read (not imported) by compose/edge-update.sh to tell a runtime whose bridge hands over from an older one.
BRIDGE_HANDOVER = 1
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


def load_cyclonedds() -> Any:
    """Import Cyclone DDS's Python binding, or say in one sentence how to get it."""
    try:
        import cyclonedds.domain
        import cyclonedds.pub
        import cyclonedds.sub
        import cyclonedds.topic
    except ImportError as exc:
        raise BackendUnavailable(
            f"The ROS 2 bridge needs the cyclonedds package (install edge-deploy[ros2]), which is not importable ({exc})."
        ) from None
    import cyclonedds

    return cyclonedds


@dataclass
class Frame:
    """One converted observation and when it arrived (``time.monotonic()``)."""

    value: np.ndarray
    arrived: float
    stamp_age: float = 0.0  # how old its header stamp already was on arrival (0: no stamp or not checked)
    # The observation's instant (wall clock): its header stamp, else (no stamp, or stamps not checked because
    # the camera uses sim time) its arrival. A hand-over splits observations by it.
    stamp: float = 0.0

    def age(self, now: float) -> float:
        return now - self.arrived + self.stamp_age


@dataclass
class Pair:
    image: Frame
    state: Frame


@dataclass
class ObservationSync:
    """Pairs the latest image with the latest state; pure logic with explicit times so tests can drive it.

    An image is used at most once. It pairs with the newest state whose arrival is within ``window_s`` of its
    own; it is dropped as ``stale`` once older than ``stale_after_s``, as ``unsynced`` when no state can still
    arrive inside the window, and as ``superseded`` when a newer image replaces it before it was used.
    Pairs are released at most once per ``min_interval_s``.
    """

    window_s: float
    stale_after_s: float
    min_interval_s: float
    image: Frame | None = None
    state: Frame | None = None
    last_release: float = -math.inf
    drops: dict[str, int] = field(default_factory=dict)

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def put_image(self, frame: Frame) -> None:
        if self.image is not None:
            self._drop("superseded")
        self.image = frame

    def put_state(self, frame: Frame) -> None:
        self.state = frame

    def poll(self, now: float) -> tuple[Pair | None, float]:
        """A pair ready to run now (or None), and how long until something can change without new data."""
        image = self.image
        if image is None:
            return None, math.inf
        if image.age(now) > self.stale_after_s:
            self.image = None
            self._drop("stale")
            return None, math.inf
        state = self.state
        if state is None or state.arrived < image.arrived - self.window_s:
            deadline = image.arrived + self.window_s
            if now > deadline:
                self.image = None
                self._drop("unsynced")
                return None, math.inf
            return None, deadline - now
        if state.arrived > image.arrived + self.window_s:
            self.image = None
            self._drop("unsynced")
            return None, math.inf
        wait = self.last_release + self.min_interval_s - now
        if wait > 0:
            return None, min(wait, self.stale_after_s - image.age(now))
        self.image = None
        self.last_release = now
        return Pair(image, state), math.inf


class BridgeMetrics:
    """The bridge's series in the service's Prometheus registry (all names start ``edge_ros2_``)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.received = Counter(
            "edge_ros2_messages_total", "ROS 2 messages received, by stream", ["stream"], registry=registry
        )
        self.bad = Counter(
            "edge_ros2_bad_messages_total",
            "ROS 2 messages refused (wrong encoding, wrong size, bad values), by stream and reason",
            ["stream", "reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "edge_ros2_dropped_frames_total",
            "Images not used: stale, unsynced (no state in the window) or superseded by a newer one",
            ["reason"],
            registry=registry,
        )
        self.actions = Counter("edge_ros2_actions_total", "Actions published", registry=registry)
        self.probes = Counter(
            "edge_ros2_probes_total",
            "Probes answered on the probe topic (the rollout gate's DDS check)",
            registry=registry,
        )
        self.errors = Counter(
            "edge_ros2_infer_errors_total", "Inferences that failed or were refused", registry=registry
        )
        self.suppressed = Counter(
            "edge_ros2_suppressed_actions_total",
            "Observations not answered because of a hand-over: standby (gated, not taken over yet), before "
            "(stamped before this bridge's takeover), after (a successor's), stopping (SIGTERM, no successor)",
            ["reason"],
            registry=registry,
        )
        self.active = Gauge(
            "edge_ros2_active",
            "1 while the bridge publishes actions, 0 in standby (a hand-over candidate) or once stopping",
            registry=registry,
        )
        self.latency = Histogram(
            "edge_ros2_latency_seconds",
            "Per message: image received to action published",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class ThrottledLog:
    """Logs the first of each kind of problem and then at most once per ``every_s``, with the count skipped."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def warning(self, key: tuple[str, str], sentence: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        skipped = self._skipped.pop(key, 0)
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        log.warning("ROS 2 %s: %s%s", key[0], sentence, more)
        self._last[key] = now


def _pick(specs: list[TensorSpec], name: str, rank: int, what: str, env: str) -> TensorSpec:
    if name:
        for spec in specs:
            if spec.name == name:
                return spec
        raise EdgeError(f"The model has no tensor {name!r} for the ROS 2 {what} (set {env}).")
    for spec in specs:
        if len(spec.shape) == rank:
            return spec
    raise EdgeError(f"The model has no {rank}-D input to take the ROS 2 {what}; name one with {env}.")


class Ros2Bridge:
    """Subscribes to the observation topics, runs ``infer`` on synchronized pairs, publishes the action.

    ``infer`` takes and returns dicts of name → array (batch 1). DDS entities are created here, so a missing
    ``cyclonedds`` or an unusable ``CYCLONEDDS_URI`` is reported before the service starts listening;
    ``start()`` runs the bridge thread and ``stop()`` ends it and leaves the DDS domain. Not restartable.
    ``standby=True``: a hand-over candidate, silent until ``take_over()`` (see the module's docstring).
    """

    def __init__(
        self,
        infer: Infer,
        inputs: list[TensorSpec],
        config: Ros2Config | None = None,
        registry: Any = None,
        standby: bool = False,
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.config = config or Ros2Config()
        self.infer = infer
        self.registry = registry if registry is not None else CollectorRegistry()
        image_spec = _pick(inputs, self.config.image_input, 4, "image", "EDGE_ROS2_IMAGE_INPUT")
        state_spec = _pick(inputs, self.config.state_input, 2, "robot state", "EDGE_ROS2_STATE_INPUT")
        others = [s.name for s in inputs if s.name not in (image_spec.name, state_spec.name)]
        if others:
            raise EdgeError(
                f"The model also takes {', '.join(others)}, which no ROS 2 topic of the bridge provides."
            )
        self.image_input = ImageInput(image_spec, self.config.pixel_scale)
        self.state_input = VectorInput(state_spec)
        self.metrics = BridgeMetrics(self.registry)
        self.sync = ObservationSync(
            window_s=self.config.sync_window_s,
            stale_after_s=self.config.stale_after_s,
            min_interval_s=self.config.min_interval_s,
        )
        self._complaints = ThrottledLog()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counted_drops: dict[str, int] = {}
        # Hand-over state: the mode, and the observations this bridge answers: stamped in [_from, _until).
        self.bridge_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.mode = "standby" if standby else "active"
        self._from = -math.inf
        self._until = math.inf
        self.metrics.active.set(0 if standby else 1)
        self._open_dds()

    # -- DDS -----------------------------------------------------------------------------------------------

    def _open_dds(self) -> None:
        load_cyclonedds()
        from cyclonedds.core import DDSException, ReadCondition, SampleState, WaitSet
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        from edge_runtime.ros2.msgs import Float32MultiArray, Image

        cfg = self.config
        try:
            self._participant: Any = DomainParticipant(cfg.domain_id)
            image_topic = Topic(self._participant, cfg.image_topic, Image)
            state_topic = Topic(self._participant, cfg.state_topic, Float32MultiArray)
            action_topic = Topic(self._participant, cfg.action_topic, Float32MultiArray)
            self._image_reader = DataReader(
                self._participant, image_topic, qos=profile(cfg.image_qos).to_dds()
            )
            self._state_reader = DataReader(
                self._participant, state_topic, qos=profile(cfg.state_qos).to_dds()
            )
            self._writer = DataWriter(self._participant, action_topic, qos=profile(cfg.action_qos).to_dds())
            reliable = profile("reliable").to_dds()
            self._probe_reader = DataReader(
                self._participant, Topic(self._participant, PROBE_TOPIC, Float32MultiArray), qos=reliable
            )
            self._probe_writer = DataWriter(
                self._participant,
                Topic(self._participant, PROBE_REPLY_TOPIC, Float32MultiArray),
                qos=reliable,
            )
            handover_topic = Topic(self._participant, HANDOVER_TOPIC, Float32MultiArray)
            self._handover_reader = DataReader(self._participant, handover_topic, qos=reliable)
            self.handover_matches = MatchCount()  # the handover readers this bridge's announcement reaches
            self._handover_writer = DataWriter(
                self._participant, handover_topic, qos=reliable, listener=self.handover_matches.listener()
            )
            self._waitset = WaitSet(self._participant)
            for reader in (self._image_reader, self._state_reader, self._probe_reader, self._handover_reader):
                self._waitset.attach(ReadCondition(reader, SampleState.NotRead))
        except DDSException as exc:
            raise EdgeError(
                f"Cyclone DDS could not join ROS 2 domain {cfg.domain_id} (check CYCLONEDDS_URI): {exc}."
            ) from None
        log.info(
            "ROS 2 bridge (cyclonedds %s) on domain %d: %s + %s -> %s",
            cyclonedds_version(),
            cfg.domain_id,
            cfg.image_topic,
            cfg.state_topic,
            cfg.action_topic,
        )

    def _close_dds(self) -> None:
        participant = getattr(self, "_participant", None)
        if participant is None:
            return
        for name in (
            "_waitset",
            "_writer",
            "_image_reader",
            "_state_reader",
            "_probe_reader",
            "_probe_writer",
            "_handover_reader",
            "_handover_writer",
        ):
            setattr(self, name, None)
        self._participant = None
        participant.__del__()  # deletes the participant and every entity under it now, not at GC time

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._participant is None:
            raise EdgeError("This ROS 2 bridge was stopped; create a new one to serve again.")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="ros2-bridge", daemon=True)
        self._thread.start()

    def standby(self) -> None:
        """Become a hand-over candidate: answer probes, publish no action until ``take_over()``."""
        if self.mode == "active" and self._from == -math.inf:
            self.mode = "standby"
            self.metrics.active.set(0)

    def take_over(self) -> float:
        """Leave standby: answer observations stamped from ``at`` = now + ``HANDOVER_LEAD_S`` on, and tell
        the running bridge (``HANDOVER_TOPIC``) to answer only those before it. Returns ``at``."""
        from edge_runtime.ros2.msgs import Float32MultiArray, MultiArrayDimension, MultiArrayLayout

        if self.mode != "standby":
            return self._from
        at = float(f"{time.time() + HANDOVER_LEAD_S:.6f}")  # exactly what the announcement says
        self._from = at
        self.mode = "active"
        self.metrics.active.set(1)
        labels = ("takeover", self.bridge_id, f"{at:.6f}", socket.gethostname())
        dims = [MultiArrayDimension(label=label) for label in labels]
        if self._handover_writer is not None:
            self._handover_writer.write(Float32MultiArray(layout=MultiArrayLayout(dim=dims), data=[]))  # type: ignore[arg-type]
        log.info(
            "ROS 2 bridge took over: it answers observations stamped from %.6f on (announced to %d other bridge(s))",
            at,
            self.bridges_reached,
        )
        return at

    @property
    def bridges_reached(self) -> int:
        """Other bridges on the domain that hear this one's takeover (its own reader matches too)."""
        return max(0, self.handover_matches.count - 1)

    def quiesce(self) -> None:
        """SIGTERM, before the HTTP drain: publish no action for observations past the successor's takeover
        instant, or, with no successor announced, none at all from now on."""
        if self.mode == "stopping":
            return
        if self._until == math.inf:
            self._until = -math.inf
        self.mode = "stopping"
        self.metrics.active.set(0)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the bridge thread (bounded wait) and leave the DDS domain. A bridge that a successor took over
        from first waits (at most ``HANDOVER_GRACE_S`` past the takeover instant) for its last observations."""
        if math.isfinite(self._until):
            time.sleep(max(0.0, min(self._until + HANDOVER_GRACE_S - time.time(), 1.0)))
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("ROS 2 bridge thread did not end within %.1f s; leaving it to exit", timeout_s)
                return
        self._close_dds()

    def __enter__(self) -> Ros2Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        wait_s = MAX_WAIT_S
        while not self._stop.is_set():
            try:
                self._waitset.wait(int(max(0.001, min(wait_s, MAX_WAIT_S)) * 1e9))  # ns; ≥ 1 ms, no busy loop
                self._take_handover()
                self._take_states()
                self._take_images()
                self._answer_probes()
                wait_s = self._step()
            except Exception as exc:  # the bridge outlives any one message; the loop itself must not die
                self._complaints.warning(
                    ("bridge", type(exc).__name__), f"unexpected error, continuing: {exc}"
                )
                wait_s = MAX_WAIT_S

    def _take(self, reader: Any, stream: str) -> list[Any]:
        samples: list[Any] = []
        while True:
            try:
                batch = reader.take(N=TAKE_BATCH)
            except Exception as exc:  # a sample that does not deserialize as the declared type
                self._bad(stream, BadMessage("malformed", f"a sample could not be decoded ({exc})."))
                return samples
            samples.extend(s for s in batch if getattr(s, "sample_info", None) and s.sample_info.valid_data)
            if len(batch) < TAKE_BATCH:
                return samples

    def _bad(self, stream: str, exc: BadMessage) -> None:
        self.metrics.bad.labels(stream, exc.reason).inc()
        self._complaints.warning((stream, exc.reason), f"message refused: {exc}")

    def _take_states(self) -> None:
        for msg in self._take(self._state_reader, "state"):
            now = time.monotonic()
            self.metrics.received.labels("state").inc()
            try:
                self.sync.put_state(Frame(self.state_input(msg), now))
            except BadMessage as exc:
                self._bad("state", exc)

    def _answer_probes(self) -> None:
        """One inference on a zero observation per probe request, answered on the probe's reply topic: the
        request's first ``layout.dim`` label (its nonce) leads the reply's dimensions. A second label
        ``standby`` is for a bridge in standby only (the hand-over's gate)."""
        from edge_runtime.ros2.msgs import MultiArrayDimension

        for request in self._take(self._probe_reader, "probe"):
            dims = list(request.layout.dim)
            nonce = dims[0].label if dims else ""
            if len(dims) > 1 and dims[1].label == STANDBY and self.mode != "standby":
                continue  # the hand-over's gate asks the candidate, not this serving bridge
            feeds = {
                spec.name: np.zeros(spec.concrete_shape(1), dtype=np.dtype(spec.dtype))
                for spec in (self.image_input.spec, self.state_input.spec)
            }
            try:
                outputs = self.infer(feeds)
                name = self.config.action_output or next(iter(outputs))
                reply = to_float32_multiarray(np.asarray(outputs[name]), name)
            except Exception as exc:
                self.metrics.errors.inc()
                self._complaints.warning(("probe", type(exc).__name__), f"probe not answered: {exc}")
                continue
            reply.layout.dim.insert(0, MultiArrayDimension(label=nonce, size=0, stride=0))
            self._probe_writer.write(reply)
            self.metrics.probes.inc()

    def _take_handover(self) -> None:
        """A successor's takeover instant: observations stamped from then on are its own. Only one from this
        host counts (host networking: a container has the host's name), so a robot that shares the domain
        with another cannot be silenced by the other's hand-over."""
        for msg in self._take(self._handover_reader, "handover"):
            labels = [d.label for d in msg.layout.dim]
            if len(labels) != 4 or labels[0] != "takeover" or labels[1] == self.bridge_id:
                continue
            if labels[3] != socket.gethostname():  # another robot on this domain: its hand-over, not ours
                continue
            try:
                at = float(labels[2])
            except ValueError:
                continue
            if self.mode == "standby" or not math.isfinite(at) or at <= self._from or at >= self._until:
                continue  # not for this bridge: it serves nothing yet, or the announcement is older than it
            self._until = at
            log.info(
                "ROS 2 bridge handed over: another release answers observations stamped from %.6f on", at
            )

    def _take_images(self) -> None:
        samples = self._take(self._image_reader, "image")
        now = time.monotonic()
        newest = None
        for i, msg in enumerate(samples):
            self.metrics.received.labels("image").inc()
            try:
                check_image(msg)
            except BadMessage as exc:
                self._bad("image", exc)
                continue
            if newest is not None:
                self.sync.drops["superseded"] = self.sync.drops.get("superseded", 0) + 1
            newest = i
        if newest is None:
            return
        msg = samples[newest]
        try:
            value = self.image_input(msg)
        except BadMessage as exc:
            self._bad("image", exc)
            return
        wall = time.time()
        stamp = self._stamp(msg)
        age = max(0.0, wall - stamp) if stamp is not None else 0.0
        self.sync.put_image(Frame(value, now, age, stamp if stamp is not None else wall))

    def _stamp(self, msg: Any) -> float | None:
        """The header stamp in wall-clock seconds, or None (no stamp, or stamps not checked: sim time)."""
        if not self.config.stamp_check:
            return None
        stamp = msg.header.stamp
        if not stamp.sec and not stamp.nanosec:
            return None
        return float(stamp.sec + stamp.nanosec * 1e-9)

    def _step(self) -> float:
        pair, wait_s = self.sync.poll(time.monotonic())
        self._count_drops()
        if pair is not None:
            self._serve(pair)
            pair, wait_s = self.sync.poll(time.monotonic())
            self._count_drops()
        return wait_s

    def _count_drops(self) -> None:
        for reason, total in self.sync.drops.items():
            new = total - self._counted_drops.get(reason, 0)
            if new:
                self.metrics.dropped.labels(reason).inc(new)
                self._counted_drops[reason] = total
                if reason == "stale" and self.config.stamp_check:
                    self._complaints.warning(
                        ("image", "stale"),
                        f"frames older than {self.config.stale_after_s * 1000:.0f} ms are dropped "
                        "(if the camera stamps with sim time, set EDGE_ROS2_STAMP_CHECK=0).",
                    )

    def _share(self, stamp: float) -> str:
        """Whether this bridge answers an observation stamped ``stamp`` ("") or why not."""
        if self.mode == "standby":
            return "standby"
        if stamp < self._from:
            return "before"
        if stamp >= self._until:
            return "stopping" if self._until == -math.inf else "after"
        return ""

    def _serve(self, pair: Pair) -> None:
        why_not = self._share(pair.image.stamp)
        if why_not:
            self.metrics.suppressed.labels(why_not).inc()
            return
        feeds = {self.image_input.spec.name: pair.image.value, self.state_input.spec.name: pair.state.value}
        try:
            outputs = self.infer(feeds)
            name = self.config.action_output or next(iter(outputs))
            action = np.asarray(outputs[name])
        except Exception as exc:
            self.metrics.errors.inc()
            self._complaints.warning(("inference", type(exc).__name__), f"no action published: {exc}")
            return
        self._writer.write(to_float32_multiarray(action, name))
        self.metrics.actions.inc()
        self.metrics.latency.observe(time.monotonic() - pair.image.arrived)
