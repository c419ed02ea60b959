"""Pull mode at scale, measured on one host (``python -m bench pull``):

1. ``bytes``: upstream bytes for one model-only release to N simulated robots (each its own real dockerd)
   pulling through one site cache (``docker-registry`` in proxy mode) against N pulling straight from the
   upstream. The upstream is a private ``docker-registry`` started for the run; its access log says what it
   served, per layer. Robots first hold the previous release (shared base + model A); the measured release
   changes only the model layer. Three ways: direct (all at once), cache (all at once, cold), cache staged
   (one robot first, as a canary wave does, then the rest).
2. ``load``: the control plane's requests per second for K **lightweight agents** (poll loops only: no
   dockerd, no deploy; each poll is one HEAD of the channel tag at the registry and one PUT of the robot's
   report to the pushgateway, as a real agent's idle poll is) at a poll interval with jitter, with the CPU
   time the registry, the pushgateway and Prometheus spent, and the operator's ``read_fleet`` time.
3. ``promote``: time from a channel change (the promote) to 95 % of K lightweight agents reporting the new
   release: the poll interval and jitter bound it, as they bound real agents (their apply time adds on).

Needs root and the host harness (scripts/host-setup: the engine binaries, docker-registry, prometheus,
prometheus-pushgateway). Everything listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

NAME = "pull"
MIB = 1024 * 1024
REPO = "edge-deploy/pull-bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pull-sizes", default="1,3,6", help="pull: robot counts for the bytes run (1,3,6)")
    parser.add_argument("--pull-agents", default="100,300,1000", help="pull: light agent counts for load")
    parser.add_argument("--pull-promote-agents", type=int, default=200, help="pull: light agents for promote")
    parser.add_argument("--pull-interval", type=float, default=10.0, help="pull: poll interval, s (10)")
    parser.add_argument("--pull-jitter", type=float, default=5.0, help="pull: poll jitter, s (5)")
    parser.add_argument("--pull-window", type=float, default=30.0, help="pull: load window per K, s (30)")
    parser.add_argument("--pull-model-mib", type=int, default=16, help="pull: model layer MiB (16)")
    parser.add_argument("--pull-base-mib", type=int, default=48, help="pull: shared base layer MiB (48)")
    parser.add_argument("--pull-parts", default="bytes,load,promote", help="pull: which parts to run")


# --- images pushed straight to a registry (no build: the bytes are what is measured) ----------------


def _layer(size: int, name: str) -> bytes:
    """An uncompressed tar layer holding one file of random (incompressible) bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def _push_blob(listen: str, data: bytes) -> str:
    import httpx

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if httpx.head(f"http://{listen}/v2/{REPO}/blobs/{digest}", timeout=30).status_code == 200:
        return digest
    start = httpx.post(f"http://{listen}/v2/{REPO}/blobs/uploads/", timeout=30)
    start.raise_for_status()
    loc = start.headers["location"]
    loc = f"http://{listen}{loc}" if loc.startswith("/") else loc
    httpx.put(
        f"{loc}{'&' if '?' in loc else '?'}digest={digest}", content=data, timeout=300
    ).raise_for_status()
    return digest


def _push_image(listen: str, layers: list[bytes], tag: str) -> tuple[str, list[str]]:
    """An OCI image of ``layers`` for this host's platform; returns its manifest digest and layer digests."""
    import httpx

    digests = [_push_blob(listen, layer) for layer in layers]
    config = json.dumps(
        {
            "architecture": ARCH,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": digests},
        }
    ).encode()
    config_digest = _push_blob(listen, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(x)}
                for d, x in zip(digests, layers, strict=True)
            ],
        }
    ).encode()
    r = httpx.put(
        f"http://{listen}/v2/{REPO}/manifests/{tag}",
        content=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=30,
    )
    r.raise_for_status()
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), digests


# --- part 1: upstream bytes ------------------------------------------------------------------------------


def _pull(socket: str, ref: str) -> float:
    t0 = time.monotonic()
    p = subprocess.run(
        ["docker", "-H", f"unix://{socket}", "pull", "-q", ref], capture_output=True, text=True, timeout=600
    )
    if p.returncode != 0:
        raise RuntimeError(f"docker pull {ref} failed: {p.stderr.strip()[-300:]}")
    return time.monotonic() - t0


def _pull_all(sockets: list[str], ref: str) -> float:
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(sockets)) as pool:
        list(pool.map(lambda s: _pull(s, ref), sockets))
    return time.monotonic() - t0


def _wait_stored(cache: Any, digest: str, timeout: float = 120) -> None:
    """Until the cache has committed the blob (then it serves it from its own storage)."""
    hexd = digest.split(":", 1)[1]
    data = Path(cache.state_dir) / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    deadline = time.monotonic() + timeout
    while not data.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)


def _bytes_for(n: int, root: Path, base_mib: int, model_mib: int) -> list[dict[str, Any]]:
    from edge_deploy.fleet import site as sites
    from edge_deploy.simulation import simulate as sim
    from edge_deploy.simulation.processes import free_port

    rows: list[dict[str, Any]] = []
    taken: set[int] = set()
    up_port, cache_port = free_port(17100, taken), free_port(17100, taken)
    up = sites.site_up(f"up{n}", None, listen=f"127.0.0.1:{up_port}", state_root=root)
    try:
        cache = sites.site_up(
            f"cache{n}", f"http://{up.listen}", listen=f"127.0.0.1:{cache_port}", state_root=root
        )
        try:
            base = _layer(base_mib * MIB, "base.bin")
            v1, _ = _push_image(up.listen, [base, _layer(model_mib * MIB, "model/a.onnx")], "v1")
            models = {
                mode: _layer(model_mib * MIB, f"model/{mode}.onnx") for mode in ("direct", "cache", "staged")
            }
            model_size = len(models["cache"])
            releases = {mode: _push_image(up.listen, [base, models[mode]], mode) for mode in models}
            del models
            with sim.simulated(
                n, f"pb{n}", attempts=2, ssh_port_base=2700 + 10 * n, service_port_base=18600 + 10 * n
            ) as s:
                sockets = [r.socket for r in s.robots]
                # the previous release on every robot, through the cache (it then holds the base layer)
                _pull(sockets[0], f"{cache.listen}/{REPO}@{v1}")
                _wait_stored(cache, v1)
                _pull_all(sockets, f"{cache.listen}/{REPO}@{v1}")
                for mode in ("direct", "cache", "staged"):
                    digest, layers = releases[mode]
                    host = up.listen if mode == "direct" else cache.listen
                    ref = f"{host}/{REPO}@{digest}"
                    time.sleep(1)  # the proxy's background store of earlier blobs is logged by now
                    offset = sites.log_offset(up)
                    if mode == "staged":
                        wall = _pull(sockets[0], ref)
                        _wait_stored(cache, layers[1])
                        wall += _pull_all(sockets[1:], ref) if n > 1 else 0.0
                    else:
                        wall = _pull_all(sockets, ref)
                    time.sleep(1.5)
                    served = sites.served_blobs(up.log, offset)
                    model = served.get(layers[1], sites.Served())
                    rows.append(
                        {
                            "part": "bytes",
                            "robots": n,
                            "mode": {
                                "direct": "direct",
                                "cache": "site cache",
                                "staged": "site cache, staged",
                            }[mode],
                            "upstream_bytes": sum(x.bytes for x in served.values()),
                            "model_layer_bytes": model_size,
                            "model_layer_copies": model.gets,
                            "base_layer_copies": served.get(layers[0], sites.Served()).gets,
                            "upstream_blob_gets": sum(x.gets for x in served.values()),
                            "wall_s": round(wall, 2),
                        }
                    )
                    print(
                        f"pull bytes: {n} robot(s) {mode}: {rows[-1]['upstream_bytes']} B upstream",
                        flush=True,
                    )
        finally:
            sites.site_down(cache, purge=True)
    finally:
        sites.site_down(up, purge=True)
    return rows


# --- parts 2 and 3: lightweight agents ----------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, from /proc (the clock ticks of Linux's proc(5))."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report_body(robot: str, version: str, bucket: int) -> bytes:
    from prometheus_client import generate_latest

    from edge_deploy.fleet.telemetry import RobotReport, report_registry

    report = RobotReport(robot, version, "stable", True, "updated", "hit", time.time(), bucket)
    return generate_latest(report_registry(report))


class LightFleet:
    """K poll loops in one asyncio loop: each robot polls its channel tag (HEAD, digest compared) and pushes
    its report, then sleeps the interval plus a random jitter; on a new digest it 'applies' it by reporting
    the version the channel names (no pull, no deploy: a light agent measures the control plane only)."""

    def __init__(self, k: int, registry: str, gateway: str, interval: float, jitter: float) -> None:
        self.k, self.registry, self.gateway = k, registry, gateway
        self.interval, self.jitter = interval, jitter
        self.versions: dict[str, str] = {}
        self.adopted: dict[str, float] = {}
        self.latency: list[float] = []
        self.errors = 0
        self.channel_versions: dict[str, str] = {}
        self.bodies: dict[str, tuple[str, bytes]] = {}

    async def robot(self, client: Any, i: int, stop: float) -> None:
        name = f"light-{i:05d}"
        await asyncio.sleep(random.uniform(0, self.interval + self.jitter))
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                head = await client.head(
                    f"http://{self.registry}/v2/{REPO}/manifests/channel-stable",
                    headers={"Accept": OCI_MANIFEST},
                )
                version = self.channel_versions.get(head.headers.get("docker-content-digest", ""), "")
                if version and self.versions.get(name) != version:
                    self.versions[name] = version
                    self.adopted[name] = time.monotonic()
                version_now = self.versions.get(name, "none")
                if self.bodies.get(name, (None,))[0] != version_now:  # rendered once per release
                    self.bodies[name] = (version_now, _report_body(name, version_now, i % 100))
                body = self.bodies[name][1]
                put = await client.put(
                    f"{self.gateway}/metrics/job/edge_robot/robot/{name}",
                    content=body,
                    headers={"Content-Type": "text/plain; version=0.0.4"},
                )
                if head.status_code != 200 or put.status_code not in (200, 202):
                    self.errors += 1
            except Exception:
                self.errors += 1
            self.latency.append(time.monotonic() - t0)
            await asyncio.sleep(self.interval + random.uniform(0, self.jitter))

    async def run(self, seconds: float, during: Any = None) -> None:
        import httpx

        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            stop = time.monotonic() + seconds
            tasks = [asyncio.create_task(self.robot(client, i, stop)) for i in range(self.k)]
            if during is not None:
                await during()
            await asyncio.gather(*tasks)


def _set_channel(listen: str, manifest_digest_tag: str) -> str:
    """Point channel-stable at the manifest tagged ``manifest_digest_tag``; returns the tag's digest."""
    import httpx

    got = httpx.get(
        f"http://{listen}/v2/{REPO}/manifests/{manifest_digest_tag}",
        headers={"Accept": OCI_MANIFEST},
        timeout=30,
    )
    got.raise_for_status()
    httpx.put(
        f"http://{listen}/v2/{REPO}/manifests/channel-stable",
        content=got.content,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=30,
    ).raise_for_status()
    return "sha256:" + hashlib.sha256(got.content).hexdigest()


def _gateway_pushes(gateway: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway}/metrics", timeout=30).text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "pushgateway_http_requests":
            total += sum(
                s.value
                for s in fam.samples
                if s.labels.get("handler") == "push" and s.name.endswith("_total")
            )
    return total


def _light(
    root: Path,
    ks: list[int],
    interval: float,
    jitter: float,
    window: float,
    parts: set[str],
    promote_k: int = 200,
) -> list[dict[str, Any]]:
    import httpx

    from edge_deploy.fleet import site as sites
    from edge_deploy.fleet import telemetry
    from edge_deploy.simulation import pull
    from edge_deploy.simulation.processes import free_port, terminate

    rows: list[dict[str, Any]] = []
    taken: set[int] = set()
    reg_port, gw_port, prom_port = (free_port(17200, taken) for _ in range(3))
    control = root / "control"
    control.mkdir(parents=True)
    reg = sites.site_up("light-registry", None, listen=f"127.0.0.1:{reg_port}", state_root=root)
    gw_pid, gateway = pull.start_pushgateway(control, gw_port)
    prom_pid, prometheus = pull.start_prometheus(control, prom_port, gw_port, scrape_interval_s=5)
    try:
        small = _layer(4096, "model/x.onnx")
        _push_image(reg.listen, [small], "r1")
        _push_image(reg.listen, [_layer(4096, "model/y.onnx")], "r2")
        d1 = _set_channel(reg.listen, "r1")
        for k in ks:
            if "load" not in parts:
                break
            fleet = LightFleet(k, reg.listen, gateway, interval, jitter)
            fleet.channel_versions = {d1: "r1"}

            # warm-up: every robot polls once, then the window is measured
            async def measured(fleet: LightFleet = fleet) -> None:
                await asyncio.sleep(interval + jitter)
                fleet.mark = (  # type: ignore[attr-defined]
                    time.monotonic(),
                    sites.log_offset(reg),
                    _gateway_pushes(gateway),
                    {p: _cpu_seconds(p) for p in (reg.pid, gw_pid, prom_pid)},
                    len(fleet.latency),
                )
                await asyncio.sleep(window)
                t1 = time.monotonic()
                t0, offset, pushes0, cpu0, lat0 = fleet.mark  # type: ignore[attr-defined]
                log = reg.log.read_bytes()[offset:].decode(errors="replace")
                heads = log.count(f'"HEAD /v2/{REPO}/manifests/channel-stable')
                pushes = _gateway_pushes(gateway) - pushes0
                cpu = {p: _cpu_seconds(p) - cpu0[p] for p in cpu0}
                lat = sorted(fleet.latency[lat0:])
                q0 = time.monotonic()
                seen = telemetry.read_fleet(prometheus)
                read_s = time.monotonic() - q0
                span = t1 - t0
                rows.append(
                    {
                        "part": "load",
                        "agents": fleet.k,
                        "interval_s": interval,
                        "jitter_s": jitter,
                        "offered_per_s": round(fleet.k / (interval + jitter / 2), 1),
                        "registry_req_per_s": round(heads / span, 1),
                        "gateway_push_per_s": round(pushes / span, 1),
                        "registry_cpu_ms_per_req": round(1000 * cpu[reg.pid] / max(heads, 1), 3),
                        "gateway_cpu_ms_per_push": round(1000 * cpu[gw_pid] / max(pushes, 1), 3),
                        "prometheus_cpu_s_per_s": round(cpu[prom_pid] / span, 4),
                        "poll_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                        "poll_p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None,
                        "read_fleet_s": round(read_s, 3),
                        "robots_in_prometheus": len(seen),
                        "errors": fleet.errors,
                    }
                )
                print(
                    f"pull load: {fleet.k} light agents: {rows[-1]['registry_req_per_s']} req/s", flush=True
                )

            asyncio.run(fleet.run(interval + jitter + window + 1, measured))
            httpx.put(f"{gateway}/api/v1/admin/wipe", timeout=30)
        if "promote" in parts:
            k = promote_k
            fleet = LightFleet(k, reg.listen, gateway, interval, jitter)
            d2 = ""

            async def promote(fleet: LightFleet = fleet) -> None:
                nonlocal d2
                fleet.channel_versions = {d1: "r1"}
                await asyncio.sleep(interval + jitter + 1)  # every robot is on r1
                d2_local = _set_channel(reg.listen, "r2")
                fleet.channel_versions[d2_local] = "r2"
                fleet.promoted = time.monotonic()  # type: ignore[attr-defined]
                d2 = d2_local

            asyncio.run(fleet.run(3 * (interval + jitter) + 2, promote))
            t_promote = fleet.promoted  # type: ignore[attr-defined]
            times = sorted(t - t_promote for n, t in fleet.adopted.items() if fleet.versions.get(n) == "r2")
            p95 = times[int(0.95 * k) - 1] if len(times) >= int(0.95 * k) else None
            rows.append(
                {
                    "part": "promote",
                    "agents": k,
                    "interval_s": interval,
                    "jitter_s": jitter,
                    "on_new_release": len(times),
                    "to_50pct_s": round(times[k // 2 - 1], 2) if len(times) >= k // 2 else None,
                    "to_95pct_s": round(p95, 2) if p95 is not None else None,
                    "to_100pct_s": round(times[-1], 2) if len(times) == k else None,
                    "bound_s": interval + jitter,
                    "errors": fleet.errors,
                }
            )
            print(f"pull promote: {k} light agents: 95 % in {rows[-1]['to_95pct_s']} s", flush=True)
    finally:
        terminate(prom_pid, str(control / "prometheus.yml"))
        terminate(gw_pid, str(control / "pushgateway.data"))
        sites.site_down(reg, purge=True)
    return rows


def run(args: Any = None) -> dict[str, Any]:
    from edge_deploy.simulation import simulate as sim

    if os.geteuid() != 0:
        raise SystemExit("needs root: simulated robots are users with their own dockerd")
    for tool in ("docker", "docker-registry", "prometheus", "prometheus-pushgateway"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (scripts/host-setup)")
    parts = set((getattr(args, "pull_parts", None) or "bytes,load,promote").split(","))
    sizes = [int(x) for x in (getattr(args, "pull_sizes", None) or "1,3,6").split(",")]
    ks = [int(x) for x in (getattr(args, "pull_agents", None) or "100,300,1000").split(",")]
    interval = float(getattr(args, "pull_interval", None) or 10.0)
    jitter = float(getattr(args, "pull_jitter", None) or 5.0)
    window = float(getattr(args, "pull_window", None) or 30.0)
    base_mib = int(getattr(args, "pull_base_mib", None) or 48)
    model_mib = int(getattr(args, "pull_model_mib", None) or 16)

    def stop(*_: Any) -> None:  # SIGTERM: the finally blocks stop what this run started
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    root = Path(tempfile.mkdtemp(prefix="bench-pull-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    rows: list[dict[str, Any]] = []
    try:
        if "bytes" in parts:
            if sim.host_bin() is None:
                raise SystemExit("needs the engine binaries from scripts/host-setup")
            for n in sizes:
                rows += _bytes_for(n, root / f"bytes{n}", base_mib, model_mib)
        if parts & {"load", "promote"}:
            promote_k = int(getattr(args, "pull_promote_agents", None) or 200)
            rows += _light(root / "light", ks, interval, jitter, window, parts, promote_k)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "rows": rows,
        "base_layer_mib": base_mib,
        "model_layer_mib": model_mib,
        "registry": "docker-registry 2.8 (Debian 12), proxy mode for the site cache",
        "machine": f"{os.cpu_count()} CPUs ({os.uname().machine}), shared with other work; all on one host",
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
