"""What the ROS 2 path costs a control loop: observation published → action received over DDS.

Per model, in one run on the same inputs: a raw ``engine.infer`` call in this process (and the same with the
bridge's image conversion), a Cyclone DDS echo of the same message sizes (``bench._dds_echo``: another
process on the bridge's topics answering each image with a 7-float action at once: the floor any DDS
consumer pays here), the bridge itself (``edge-runtime serve --ros2`` as its own process, as on the robot),
and the HTTP path on that same service (``POST`` Open Inference Protocol binary, the HTTP path's fastest).
Models: the sample policy's interface with a full 224×224 rgb8 frame, and the same interface with an 8×8
frame (about 0.4 KB of image and state: the small input, where the bridge's fixed cost shows).
Loopback only, multicast off (the tests' CYCLONEDDS_URI), a random domain id. ``overhead_*`` is the bridge's
p50 above the echo floor and the raw call; the goal is ≤ 0.3 ms for the small input.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import ServiceProcess
from bench.models import write_conv_policy_bundle, write_small_io_bundle

NAME = "ros2"
GOAL_P50_MS = 0.3
REPO = Path(__file__).resolve().parent.parent
# Loopback only, no multicast (as tests/runtime/ros2_support.py): nothing leaves the machine.
CYCLONEDDS_LOOPBACK = (
    '<CycloneDDS><Domain id="any"><General><Interfaces><NetworkInterface name="lo"/></Interfaces>'
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>20</MaxAutoParticipantIndex>"
    '<Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>'
)


def _stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(samples)}


class DdsClient:
    """The robot's side: a camera and a state publisher, and a subscriber to the action."""

    def __init__(self, domain: int, image: Any, state: Any) -> None:
        from cyclonedds.core import ReadCondition, SampleState, WaitSet
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        from edge_runtime.ros2._compat import MatchCount
        from edge_runtime.ros2.config import Ros2Config
        from edge_runtime.ros2.msgs import Float32MultiArray, Image
        from edge_runtime.ros2.qos import RELIABLE

        cfg = Ros2Config(domain_id=domain)
        self.image, self.state = image, state
        self.dp = DomainParticipant(domain)
        self.matches = [MatchCount() for _ in range(3)]
        qos = RELIABLE.to_dds()
        self.image_w = DataWriter(
            self.dp, Topic(self.dp, cfg.image_topic, Image), qos=qos, listener=self.matches[0].listener()
        )
        self.state_w = DataWriter(
            self.dp,
            Topic(self.dp, cfg.state_topic, Float32MultiArray),
            qos=qos,
            listener=self.matches[1].listener(),
        )
        self.reader = DataReader(
            self.dp,
            Topic(self.dp, cfg.action_topic, Float32MultiArray),
            qos=qos,
            listener=self.matches[2].listener(),
        )
        self.waitset = WaitSet(self.dp)
        self.waitset.attach(ReadCondition(self.reader, SampleState.NotRead))

    def wait_matched(self, timeout_s: float = 60.0) -> None:
        for m in self.matches:
            if not m.wait(timeout_s):
                raise SystemExit("the DDS endpoints did not match within 60 s")
        time.sleep(0.3)  # let the other side's view of the match settle too

    def round(self, timeout_s: float = 2.0) -> float | None:
        """One observation (state, then the image) → the action; ms from the image write, None if lost."""
        self.reader.take(N=64)  # anything late from an earlier round
        self.state_w.write(self.state)
        t0 = time.perf_counter_ns()
        self.image_w.write(self.image)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.waitset.wait(100_000_000)
            if self.reader.take(N=1):
                return (time.perf_counter_ns() - t0) / 1e6
        return None

    def measure(self, runs: int, warmup: int = 30) -> tuple[list[float], int]:
        samples, lost = [], 0
        for i in range(runs + warmup):
            dt = self.round()
            if dt is None:
                lost += 1
            elif i >= warmup:
                samples.append(dt)
            time.sleep(0.002)  # above the bridge's rate limit interval; lets both sides settle
        return samples, lost

    def close(self) -> None:
        self.dp.__del__()


def _model(
    model: str, bundle_dir: Path, cache: Path, domain: int, runs: int, env: dict[str, str]
) -> list[dict]:
    from bench.service_overhead import _post_timer
    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle
    from edge_runtime.cache import EngineCache
    from edge_runtime.device import device_identity
    from edge_runtime.oip import encode_request
    from edge_runtime.ros2.convert import ImageInput, VectorInput
    from edge_runtime.ros2.msgs import Float32MultiArray, Header, Image

    bundle = ModelBundle.load(bundle_dir)
    image_spec = next(s for s in bundle.inputs if len(s.shape) == 4)
    state_spec = next(s for s in bundle.inputs if len(s.shape) == 2)
    _, _, h, w = image_spec.concrete_shape(1)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image(header=Header(), height=h, width=w, encoding="rgb8", step=w * 3, data=pixels.tobytes())  # type: ignore[arg-type]
    state_values = rng.standard_normal(state_spec.concrete_shape(1)[1]).astype(np.float32)
    state = Float32MultiArray(data=state_values.tolist())
    to_image, to_state = ImageInput(image_spec), VectorInput(state_spec)
    feeds = {image_spec.name: to_image(image), state_spec.name: to_state(state)}
    backend = get_backend("onnxruntime")
    engine = (
        EngineCache(cache)
        .open(backend, bundle, BuildOptions(batch=bundle.manifest.batch), device_identity())
        .engine
    )

    def timed(call: Any, n: int) -> list[float]:
        out = []
        for i in range(n + 30):
            t0 = time.perf_counter_ns()
            call()
            if i >= 30:
                out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    raw = _stats(timed(lambda: engine.infer(feeds), runs))
    converted = _stats(
        timed(
            lambda: engine.infer({image_spec.name: to_image(image), state_spec.name: to_state(state)}), runs
        )
    )
    engine.close()
    rows = [
        {"model": model, "path": "raw engine.infer", **raw},
        {"model": model, "path": "raw + bridge conversion", **converted},
    ]

    echo = subprocess.Popen(
        [sys.executable, "-m", "bench._dds_echo", str(domain)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        client = DdsClient(domain, image, state)
        client.wait_matched()
        got, lost = client.measure(runs)
        client.close()
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    floor = _stats(got)
    rows.append({"model": model, "path": "DDS echo (floor)", **floor, "lost": lost})

    svc_env = {**env, "EDGE_ROS2_MAX_RATE_HZ": "5000", "EDGE_ROS2_STAMP_CHECK": "0"}
    with ServiceProcess(bundle_dir, cache, "onnxruntime", ["--ros2", "--warmup", "10"], env=svc_env) as svc:
        svc.wait_ready()
        client = DdsClient(domain, image, state)
        client.wait_matched()
        got, lost = client.measure(runs)
        client.close()
        body, header_len = encode_request(feeds)
        conn, call = _post_timer(
            svc.port,
            body,
            "application/octet-stream",
            f"/v2/models/{bundle.manifest.name}/infer",
            {"Inference-Header-Content-Length": str(header_len)},
        )
        http = _stats([call() for _ in range(runs + 30)][30:])
        conn.close()
    bridge = _stats(got)
    rows.append({"model": model, "path": "DDS bridge (serve --ros2)", **bridge, "lost": lost})
    rows.append({"model": model, "path": "HTTP POST v2 binary (same service)", **http})
    for row in rows:
        p50, path = float(row["p50_ms"]), str(row["path"])  # type: ignore[arg-type]
        row["ratio_p50"] = p50 / raw["p50_ms"]
        row["above_floor_p50_ms"] = (p50 - floor["p50_ms"]) if path.startswith("DDS bridge") else ""
    rows[-2]["overhead_p50_ms"] = bridge["p50_ms"] - floor["p50_ms"] - raw["p50_ms"]
    rows[-1]["overhead_p50_ms"] = http["p50_ms"] - raw["p50_ms"]
    return rows


def run(args: Any = None) -> dict[str, Any]:
    import platform

    try:
        import cyclonedds  # noqa: F401
    except ImportError:
        raise SystemExit("needs cyclonedds (the ros2 extra)") from None
    from edge_runtime.ros2._compat import cyclonedds_version

    runs = getattr(args, "runs", None) or 300
    domain = random.SystemRandom().randint(100, 200)
    os.environ["CYCLONEDDS_URI"] = CYCLONEDDS_LOOPBACK  # this process's participants
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "runtime"), env.get("PYTHONPATH", "")])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ros2-") as tmp:
        root = Path(tmp)
        for model, writer in (
            ("conv-policy 224x224", write_conv_policy_bundle),
            ("small-io 8x8", write_small_io_bundle),
        ):
            name = model.split()[0]
            rows += _model(model, writer(root / name), root / f"cache-{name}", domain, runs, env)
    small = next(r for r in rows if r["model"].startswith("small") and r["path"].startswith("DDS bridge"))
    big = next(r for r in rows if r["model"].startswith("conv") and r["path"].startswith("DDS bridge"))
    small_http = next(r for r in rows if r["model"].startswith("small") and r["path"].startswith("HTTP"))
    result = {
        "runs": runs,
        "backend": "onnxruntime",
        "cyclonedds": cyclonedds_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "goal_overhead_p50_ms": GOAL_P50_MS,
        "small_overhead_p50_ms": small["overhead_p50_ms"],
        "small_goal_met": small["overhead_p50_ms"] <= GOAL_P50_MS,
        "conv_overhead_p50_ms": big["overhead_p50_ms"],
        "small_http_overhead_p50_ms": small_http["overhead_p50_ms"],
        "rows": rows,
    }
    from bench.__main__ import render

    out = Path(getattr(args, "out", None) or REPO / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ros2.txt").write_text(render(NAME, result) + "\n")  # the readable table beside ros2.json
    return result
