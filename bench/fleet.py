"""Rollout time for 1, 3 and 5 simulated robots (ratio to one robot), rollback time per robot, and what
bounds each: the per-robot step timings of the rollout (pull, up, health gate) and the engine start-up the
service reports (build vs cache hit).

For each fleet size a fresh simulated fleet (``edge_deploy.simulation.simulate``: one dockerd + sshd per robot,
all on this host; robots run the host's own architecture unless ``--fleet-platform`` says otherwise) gets: release A (the runtime image: every layer is pulled, the engine is
built), release B (model-only: the same runtime with another bundle), then a rollback to A (no download,
engine cache hit). Needs root, the host harness (scripts/host-setup) and the runtime image in the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "fleet"
REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
STANDIN_BASE = f"{REGISTRY}/edge-deploy/l4t-standin:r36.4"
# Robots run their own architecture natively, as a Jetson does: on an x86 host that is linux/amd64.
# linux/arm64 on x86 runs every robot's Python under QEMU, which then bounds everything (see README).
NATIVE = "linux/arm64" if host_platform.machine() in ("aarch64", "arm64") else "linux/amd64"
HEALTH_TIMEOUT = 300.0
STEPS = ("preflight", "lock", "upload", "pull", "switch", "up", "health")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet-image",
        default=None,
        help="fleet: runtime image (tag or digest; default: built for --fleet-platform)",
    )
    parser.add_argument(
        "--fleet-platform",
        default=os.environ.get("EDGE_BENCH_PLATFORM", NATIVE),
        help=f"fleet: the robots' platform (default {NATIVE}, this host's own)",
    )
    parser.add_argument(
        "--fleet-sizes", default="1,3,5", help="fleet: comma-separated robot counts (default 1,3,5)"
    )


def _sh(*cmd: str, timeout: float = 900) -> str:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return p.stdout


def _digest_ref(image: str) -> str:
    """repository@sha256 of ``image`` as the registry has it (the release pins it by digest)."""
    if "@sha256:" in image:
        return image
    out = json.loads(
        _sh("docker", "buildx", "imagetools", "inspect", image, "--format", "{{json .Manifest}}")
    )
    return f"{image.rsplit(':', 1)[0]}@{out['digest']}"


def _runtime_image(platform: str, work: Path) -> str:
    """Build and push the runtime image for ``platform`` with the images API (stand-in base)."""
    from edge_deploy.images import build_images
    from edge_deploy.model.sample import write_sample_policy

    (work / "model").mkdir()
    write_sample_policy(work / "model" / "policy.pt")
    out = build_images(
        model_dir=work / "model",
        model="policy.pt",
        precision="fp32",
        version="bench-fleet",
        registry=REGISTRY,
        image_prefix="edge-deploy-bench",
        l4t_base=STANDIN_BASE,
        converter_base=STANDIN_BASE,
        runtime_python="3.11",
        runtime_platforms=platform,
        push=True,
        progress="quiet",
    )
    return f"{out.runtime.repository}@{out.runtime.digest}"


def _model_only_image(runtime_ref: str, work: Path, platform: str) -> str:
    """The runtime image with another model bundle (fp16 sample policy) on top: a model-only release."""
    from edge_deploy.model import ConvertOptions, convert
    from edge_deploy.model.sample import write_sample_policy

    ctx = work / "ctx"
    ctx.mkdir()
    write_sample_policy(work / "policy.pt")
    convert(work / "policy.pt", ctx / "bundle", ConvertOptions(precision="fp16"))
    for p in [ctx / "bundle", *(ctx / "bundle").iterdir()]:
        os.chmod(p, 0o755)  # bundles are written private; the service user must read them
    (ctx / "Dockerfile").write_text(f"FROM {runtime_ref}\nCOPY bundle/ /opt/edge/bundle/\n")
    return _push_build(ctx, platform, f"{REGISTRY}/edge-deploy/bench-fleet", "model-fp16", work / "meta.json")


def _push_build(ctx: Path, platform: str, repo: str, tag: str, meta: Path, *flags: str) -> str:
    """Build ``ctx`` (its Dockerfile) for ``platform`` and push it as ``repo:tag``; returns the pushed
    image as ``repo@digest`` (what a release pins). ``flags``: more ``docker buildx build`` options."""
    _sh(
        "docker",
        "buildx",
        "build",
        "--platform",
        platform,
        *flags,
        "--provenance=false",
        "--push",
        "-t",
        f"{repo}:{tag}",
        "--metadata-file",
        str(meta),
        str(ctx),
    )
    return f"{repo}@{json.loads(meta.read_text())['containerimage.digest']}"


def _engine(fleet_file: Path, devices: list[str]) -> dict[str, Any]:
    """Engine start-up as each robot's service reports it (/readyz ``startup``)."""
    from edge_deploy.fleet import fleet_status

    out = {}
    for row in fleet_status(fleet_file, devices=devices):
        engine = row.get("engine") if isinstance(row.get("engine"), dict) else {}
        startup = (engine or {}).get("startup") or {}
        out[row["robot"]] = {
            "cache_hit": startup.get("cache_hit"),
            "engine_s": startup.get("engine_seconds"),
            "build_s": startup.get("build_seconds"),
        }
    return out


def _total(timings: dict[str, float]) -> float:
    return timings.get("total") or timings.get("rollback") or sum(timings.get(k, 0.0) for k in STEPS)


def _bound(timings: dict[str, float]) -> str:
    steps = {k: v for k, v in timings.items() if k in STEPS or k == "rollback"}
    return max(steps, key=lambda k: steps[k]) if steps else ""


def _one_size(n: int, refs: dict[str, str], root: Path, platform: str) -> list[dict[str, Any]]:
    from edge_deploy.fleet import RollbackOptions, RolloutOptions, deploy_release, rollback
    from edge_deploy.release.manifest import ReleaseManifest, save_release
    from edge_deploy.simulation import simulate as sim

    releases = root / f"releases-{n}"
    for tag, ref in refs.items():
        save_release(ReleaseManifest.for_runtime_image(tag, ref, source="bench"), releases)
    rows: list[dict[str, Any]] = []
    ports: dict[str, Any] = {"ssh_port_base": 2600 + 10 * n, "service_port_base": 18300 + 10 * n}
    # attempts=2: a daemon slow to write its pidfile on a loaded host is retried once
    with sim.simulated(n, f"bench{n}", attempts=2, registry=REGISTRY, platform=platform, **ports) as s:
        names = [r.name for r in s.robots]
        ops: list[tuple[str, str | None]] = [
            ("rollout (all layers)", "0.1.0"),
            ("rollout (model-only)", "0.1.1"),
            ("rollback", None),
        ]
        for op, version in ops:
            t0 = time.monotonic()
            if version:
                # unsigned bench images: the rollout's cost, not cosign's, is measured
                options = RolloutOptions(
                    version=version,
                    releases_dir=releases,
                    health_timeout_s=HEALTH_TIMEOUT,
                    insecure_skip_signature_check=True,
                )
                res = deploy_release(s.fleet_file, options)
                per_robot = [r.to_dict() for r in res.results]
            else:
                back = rollback(s.fleet_file, RollbackOptions(health_timeout_s=HEALTH_TIMEOUT))
                per_robot = [r.to_dict() for r in back]
            wall = time.monotonic() - t0
            engine = _engine(s.fleet_file, names)
            ok = all(r["outcome"] == "updated" for r in per_robot)
            totals = [_total(r["timings"]) for r in per_robot]
            steps = {
                k: statistics.median(r["timings"].get(k, 0.0) for r in per_robot)
                for k in (*STEPS, "rollback")
                if any(k in r["timings"] for r in per_robot)
            }
            eng = [e["engine_s"] for e in engine.values() if e["engine_s"] is not None]
            rows.append(
                {
                    "robots": n,
                    "operation": op,
                    "wall_s": round(wall, 2),
                    "robot_total_s_median": statistics.median(totals) if totals else None,
                    "robot_total_s_max": max(totals) if totals else None,
                    **{f"{k}_s": round(v, 2) for k, v in steps.items()},
                    "engine_s_median": statistics.median(eng) if eng else None,
                    "cache_hits": sum(1 for e in engine.values() if e["cache_hit"]),
                    "bound_by": statistics.mode(_bound(r["timings"]) for r in per_robot) if per_robot else "",
                    "ok": ok,
                    "outcomes": sorted({r["outcome"] for r in per_robot}),
                    "per_robot": per_robot,
                    "engine": engine,
                }
            )
            print(f"fleet: {n} robot(s) {op}: {wall:.1f} s", flush=True)
    return rows


def sim_root(prefix: str) -> Path:
    """A work directory for the simulated-robot benchmarks, after checking what they need: root (robots are
    users with their own dockerd and sshd), the Docker engine and scripts/host-setup's host binaries."""
    from edge_deploy.simulation import simulate as sim

    if os.geteuid() != 0:
        raise SystemExit("needs root: simulated robots are users with their own dockerd and sshd")
    if sim.host_bin() is None or shutil.which("docker") is None:
        raise SystemExit("needs the Docker engine and host binaries from scripts/host-setup")
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(root, 0o755)  # world-searchable: robot users must be able to enter it
    return root


def run(args: Any = None) -> dict[str, Any]:
    image = getattr(args, "fleet_image", None)
    platform = getattr(args, "fleet_platform", None) or NATIVE
    sizes = [int(x) for x in (getattr(args, "fleet_sizes", None) or "1,3,5").split(",")]
    root = sim_root("bench-fleet-")
    try:
        runtime_ref = _digest_ref(image) if image else _runtime_image(platform, root)
        refs = {"0.1.0": runtime_ref, "0.1.1": _model_only_image(runtime_ref, root, platform)}
        rows: list[dict[str, Any]] = []
        for n in sizes:
            rows += _one_size(n, refs, root, platform)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"platform": platform, "image": runtime_ref, "sizes": sizes}
    for op in ("rollout (all layers)", "rollout (model-only)", "rollback"):
        one = next((r["wall_s"] for r in rows if r["robots"] == 1 and r["operation"] == op), None)
        for r in rows:
            if r["operation"] == op and one:
                r["ratio_to_1"] = round(r["wall_s"] / one, 3)
    result["rows"] = rows
    emulated = platform != NATIVE
    result["machine"] = (
        f"{os.cpu_count()} CPUs ({host_platform.machine()}); all robots on this one host; "
        f"robots run {platform}" + (" under QEMU user emulation" if emulated else " natively")
    )
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)  # others' work on a shared host skews timings
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result
