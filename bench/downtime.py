"""Service downtime through a release change, per update strategy (``stop-start`` and ``hand-over``) side
by side: a poller asks the robot's service at 100 Hz (``GET /readyz`` and one real inference,
``POST /v2/models/NAME/infer`` on the smoke input made from the model's metadata, each on a new
connection) through a model-only update, an image update, a failed update (the robot rolls back on its
own) and a rollback; the longest and total outage, refused connections and failed answers per operation.

A simulated robot (``edge_deploy.simulation``: its own dockerd and sshd on this host) runs the runtime
image built from this checkout, natively by default (``--downtime-platform linux/arm64`` on x86: under
QEMU). Needs root, the host harness (scripts/host-setup) and the local registry.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = "downtime"
HZ = 100.0
HEALTH_TIMEOUT = 300.0
# A connection the kernel refused or reset (nothing listening, a listener closing with connections in its
# queue) is "refused": the issue allows those during a switch. Anything else that is not a good answer
# (an HTTP error, a wrong body, a timeout) is "failed".
REFUSED = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


@dataclass
class Tick:
    t: float  # monotonic seconds since the poller started
    kind: str  # "ok", "refused", "failed"
    model: str = ""  # the model /readyz named (a release that answers shows here)
    detail: str = ""


@dataclass
class Poller:
    """Polls ``host:port`` at ``hz`` in a thread: readiness, then one inference (``body`` to ``path``)."""

    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    hz: float = HZ
    timeout_s: float = 2.0
    ticks: list[Tick] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            headers = {"Connection": "close", **(self.headers if body is not None else {})}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def poll_once(self) -> Tick:
        t = time.monotonic() - self._t0
        try:
            status, raw = self._request("GET", "/readyz")
            ready = json.loads(raw) if raw else {}
            model = str(ready.get("model") or "")
            if status != 200 or not ready.get("ready"):
                return Tick(t, "failed", model, f"/readyz {status}")
            status, raw = self._request("POST", self.path, self.body)
            if status != 200:
                return Tick(t, "failed", model, f"infer {status}: {raw[:80]!r}")
            answer = json.loads(raw or b"{}")
            if not answer.get("outputs"):
                return Tick(t, "failed", model, "infer answered no outputs")
            return Tick(t, "ok", model)
        except REFUSED as exc:
            return Tick(t, "refused", "", type(exc).__name__)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Tick(t, "failed", "", f"{type(exc).__name__}: {exc}"[:120])

    def _run(self) -> None:
        period = 1.0 / self.hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.ticks.append(self.poll_once())
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: no burst to catch up

    def __enter__(self) -> Poller:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="downtime-poller", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        return outages(self.ticks)


def outages(ticks: list[Tick]) -> dict[str, Any]:
    """Longest and total outage (seconds from the first bad poll to the next good one; a run still bad at
    the end counts to the last poll), polls by kind, and the models whose service the polls reached."""
    spans: list[float] = []
    start: float | None = None
    for tick in ticks:
        if tick.kind != "ok" and start is None:
            start = tick.t
        elif tick.kind == "ok" and start is not None:
            spans.append(tick.t - start)
            start = None
    if start is not None and ticks:
        spans.append(max(ticks[-1].t - start, 1.0 / HZ))
    kinds = Counter(t.kind for t in ticks)
    seconds = ticks[-1].t - ticks[0].t if len(ticks) > 1 else 0.0
    return {
        "polls": len(ticks),
        "poll_hz": round(len(ticks) / seconds, 1) if seconds else 0.0,
        "ok": kinds["ok"],
        "refused": kinds["refused"],
        "failed": kinds["failed"],
        "outages": len(spans),
        "longest_outage_s": round(max(spans, default=0.0), 3),
        "total_outage_s": round(sum(spans), 3),
        # every poll that reached a release, by the model its /readyz named (good answer or not)
        "models": dict(Counter(t.model for t in ticks if t.model)),
        "failures": sorted({t.detail for t in ticks if t.kind == "failed"})[:5],
    }


def smoke_request(host: str, port: int, timeout_s: float = 60) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of the fleet gate's smoke inference for the model ``host:port`` serves: a
    real inference of that model, binary tensors in, JSON out."""
    from edge_deploy.fleet.gate import smoke_inputs
    from edge_runtime import oip

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/readyz")
            ready = json.loads(conn.getresponse().read())
            conn.request("GET", f"/v2/models/{ready['model']}")
            metadata = json.loads(conn.getresponse().read())
            conn.close()
            break
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    body, header_length = oip.encode_request(smoke_inputs(metadata), binary=True, binary_output=False)
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers[oip.HEADER_LENGTH] = str(header_length)
    return f"/v2/models/{ready['model']}/infer", body, headers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.fleet import NATIVE

    parser.add_argument(
        "--downtime-platform",
        default=os.environ.get("EDGE_BENCH_PLATFORM", NATIVE),
        help=f"downtime: the simulated robot's platform (default {NATIVE}, this host's own)",
    )
    parser.add_argument(
        "--downtime-image", default=None, help="downtime: runtime image (default: built from this checkout)"
    )
    parser.add_argument(
        "--downtime-strategies",
        default="stop-start,hand-over",
        help="downtime: comma-separated update strategies to measure (default stop-start,hand-over)",
    )


BROKEN_MODEL = "broken-policy"


def _images(runtime_ref: str, work: Path, platform: str) -> dict[str, str]:
    """The releases' images on the runtime's layers: a model-only one (another bundle), an image update
    (a new digest), and a broken one: healthy and answering, under a model name of its own, but its
    manifest requires TensorRT, which the simulated robot lacks, so the operator's gate refuses it."""
    from bench.fleet import REGISTRY, _model_only_image, _push_build

    refs = {"model": _model_only_image(runtime_ref, work, platform)}
    repo = f"{REGISTRY}/edge-deploy/bench-downtime"
    for name, tail in (
        ("image", 'LABEL edge.bench="image-update"\n'),
        (
            "broken",
            'LABEL edge.bench="broken"\nUSER root\nRUN python3 -c "import json; p = \'/opt/edge/bundle/bundle.json\'; '
            f"d = json.load(open(p)); d['name'] = '{BROKEN_MODEL}'; json.dump(d, open(p, 'w'), indent=2)\"\n",
        ),
    ):
        ctx = work / f"ctx-{name}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {runtime_ref}\n{tail}")
        refs[name] = _push_build(ctx, platform, repo, name, ctx / "meta.json", "--network", "host")
    return refs


def _strategy_rows(
    strategy: str, major: int, s: Any, refs: dict[str, str], releases: Path
) -> list[dict[str, Any]]:
    """The four operations on one robot with ``strategy``, each polled from before it starts until it
    returns; versions ``major.x.y`` so that the other strategy's bad-versions never apply."""
    from edge_deploy.fleet import RollbackOptions, RolloutOptions, deploy_release, rollback
    from edge_deploy.release.manifest import ReleaseManifest, save_release

    base, model, image, broken = (f"{major}.0.0", f"{major}.1.0", f"{major}.2.0", f"{major}.3.0")
    for version, ref, required in (
        (base, refs["runtime"], None),
        (model, refs["model"], None),
        (image, refs["image"], None),
        (broken, refs["broken"], "tensorrt"),
    ):
        save_release(
            ReleaseManifest.for_runtime_image(version, ref, "bench", required_backend=required), releases
        )
    robot = s.robots[0]

    def rollout(version: str) -> dict[str, Any]:
        opts = RolloutOptions(
            version=version,
            releases_dir=releases,
            health_timeout_s=HEALTH_TIMEOUT,
            insecure_skip_signature_check=True,
            update_strategy=strategy,
        )
        return dict(deploy_release(s.fleet_file, opts).to_dict()["robots"][0])

    def back() -> dict[str, Any]:
        opts = RollbackOptions(health_timeout_s=HEALTH_TIMEOUT, update_strategy=strategy)
        return rollback(s.fleet_file, opts)[0].to_dict()

    first = rollout(base)  # not measured: puts the base release (and its engine) on the robot
    if first["outcome"] not in ("updated", "unchanged"):
        raise RuntimeError(f"the base release did not deploy: {first['reason']}")
    path, body, headers = smoke_request("127.0.0.1", robot.service_port)
    rows = []
    for op, call in (
        ("model-only update", lambda: rollout(model)),
        ("image update", lambda: rollout(image)),
        ("rollback", back),  # before the failed update: a stop-start restore records no previous release
        ("failed update (auto-rollback)", lambda: rollout(broken)),
    ):
        time.sleep(1.0)
        t0 = time.monotonic()
        with Poller("127.0.0.1", robot.service_port, path, body, headers) as poller:
            time.sleep(0.5)  # a baseline of good polls before the operation starts
            result = call()
            time.sleep(0.5)
        seen = poller.summary()
        rows.append(
            {
                "strategy": strategy,
                "operation": op,
                "outcome": result["outcome"],
                "made_by": (result.get("update") or {}).get("strategy", ""),
                "longest_outage_s": seen["longest_outage_s"],
                "total_outage_s": seen["total_outage_s"],
                "refused": seen["refused"],
                "failed": seen["failed"],
                "polls": seen["polls"],
                "poll_hz": seen["poll_hz"],
                "broken_seen": seen["models"].get(BROKEN_MODEL, 0),
                "operation_s": round(time.monotonic() - t0, 2),
                "fallback": (result.get("update") or {}).get("fallback", ""),
                "reason": str(result.get("reason") or "")[:200],
                "failures": seen["failures"],
            }
        )
        print(
            f"downtime: {strategy} {op}: {result['outcome']}, longest outage {seen['longest_outage_s']} s, "
            f"{seen['refused']} refused, {seen['failed']} failed",
            flush=True,
        )
    return rows


def run(args: Any = None) -> dict[str, Any]:
    import platform as host_platform

    from bench.fleet import NATIVE, REGISTRY, _digest_ref, _runtime_image, sim_root
    from edge_deploy.simulation import simulate as sim

    platform = getattr(args, "downtime_platform", None) or NATIVE
    image = getattr(args, "downtime_image", None)
    root = sim_root("bench-downtime-")
    rows: list[dict[str, Any]] = []
    try:
        runtime_ref = _digest_ref(image) if image else _runtime_image(platform, root)
        refs = {"runtime": runtime_ref, **_images(runtime_ref, root, platform)}
        with sim.simulated(
            1,
            "benchdown",
            attempts=2,
            registry=REGISTRY,
            platform=platform,
            ssh_port_base=2720,
            service_port_base=18720,
        ) as s:
            asked = (getattr(args, "downtime_strategies", None) or "stop-start,hand-over").split(",")
            for major, strategy in ((1, "stop-start"), (2, "hand-over")):
                if strategy in asked:
                    rows += _strategy_rows(strategy, major, s, refs, root / "releases")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emulated = platform != NATIVE
    worst = {
        st: max((r["longest_outage_s"] for r in rows if r["strategy"] == st), default=None)
        for st in ("stop-start", "hand-over")
    }
    return {
        "platform": platform,
        "image": runtime_ref,
        "poll": f"{HZ:.0f} Hz: GET /readyz, then the smoke inference (binary in, JSON out), new connection each",
        "longest_outage_stop_start_s": worst["stop-start"],
        "longest_outage_hand_over_s": worst["hand-over"],
        "machine": f"{os.cpu_count()} CPUs ({host_platform.machine()}), shared; one simulated robot running "
        + platform
        + (" under QEMU user emulation" if emulated else " natively"),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
