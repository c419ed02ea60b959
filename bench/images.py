"""Runtime image size above its base, bytes moved by a code-only and a model-only release, and cold vs
cached build time, with the images API (``edge_deploy.images.build_images``) and the registry's HTTP API.

Builds run against the local registry with the stand-in L4T base (scripts/host-setup), tagged under
``<registry>/edge-deploy-bench/`` so they never move the project's own tags. Bytes are compressed blob
sizes as the registry stores them: what a push uploads and a robot that holds the previous release pulls
(the blobs of the new arm64 manifest that the previous one lacks, plus the new config and manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "images"
REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
PREFIX = "edge-deploy-bench"
PLATFORM = "linux/arm64"
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images-base",
        default=f"{REGISTRY}/edge-deploy/l4t-standin:r36.4",
        help="images: L4T base for the runtime (and converter) image",
    )
    parser.add_argument(
        "--images-runtime-python",
        default="3.11",
        help="images: Python of the base (3.11 for our stand-in, 3.10 for JetPack 6)",
    )
    parser.add_argument(
        "--images-no-cold", action="store_true", help="images: skip the cold (--no-cache) build"
    )


def _manifest(repo: str, ref: str) -> tuple[dict[str, Any], int]:
    """The arm64 image manifest of repo:ref (or @digest), and its size in bytes."""
    import httpx

    url = f"http://{REGISTRY}/v2/{repo}/manifests/{ref}"
    r = httpx.get(url, headers={"Accept": ACCEPT}, timeout=30)
    r.raise_for_status()
    doc = r.json()
    if "manifests" in doc:
        os_, arch = PLATFORM.split("/")
        sub = next(
            m
            for m in doc["manifests"]
            if (m.get("platform") or {}).get("os") == os_ and m["platform"].get("architecture") == arch
        )
        return _manifest(repo, sub["digest"])
    return doc, len(r.content)


def _unpacked_bytes(repo: str, layers: dict[str, int]) -> int:
    """Uncompressed size of gzip layers (what they take on the robot's disk), by streaming each blob."""
    import zlib

    import httpx

    total = 0
    for digest in layers:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with httpx.stream(
            "GET", f"http://{REGISTRY}/v2/{repo}/blobs/{digest}", timeout=120, follow_redirects=True
        ) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes(1 << 20):
                total += len(inflate.decompress(chunk))
        total += len(inflate.flush())
    return total


def _blobs(manifest: dict[str, Any]) -> dict[str, int]:
    return {layer["digest"]: int(layer["size"]) for layer in manifest.get("layers", [])}


def _image(ref: str) -> dict[str, Any]:
    """Layer sizes, config size and manifest size of an image reference in the local registry."""
    name = ref.split("/", 1)[1]
    repo, tag = name.split("@") if "@" in name else name.rsplit(":", 1)
    manifest, msize = _manifest(repo, tag)
    layers = _blobs(manifest)
    return {
        "layers": layers,
        "config": (manifest["config"]["digest"], int(manifest["config"]["size"])),
        "manifest_bytes": msize,
        "layer_bytes": sum(layers.values()),
        "repo": repo,
    }


def _moved(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What a push of ``new`` uploads / a robot holding ``old`` downloads: blobs it lacks, config, manifest."""
    fresh = {d: s for d, s in new["layers"].items() if d not in old["layers"]}
    config = new["config"][1] if new["config"][0] != old["config"][0] else 0
    return {
        "layers_changed": len(fresh),
        "layer_bytes": sum(fresh.values()),
        "bytes": sum(fresh.values()) + config + new["manifest_bytes"],
    }


def _code_context(work: Path) -> Path:
    """A copy of the runtime image's build context whose edge_runtime code differs by one comment line."""
    ctx = work / "code-ctx"
    (ctx / "docker").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", ctx)
    for f in ("runtime.Dockerfile", "requirements.py", "link_base_package.py"):
        shutil.copy(REPO_ROOT / "docker" / f, ctx / "docker")
    shutil.copytree(
        REPO_ROOT / "runtime" / "edge_runtime",
        ctx / "runtime" / "edge_runtime",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    init = ctx / "runtime" / "edge_runtime" / "__init__.py"
    init.write_text(init.read_text() + f"# code-only change for the images benchmark {time.time()}\n")
    return ctx


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def require_harness() -> None:
    """The image benchmarks build with buildx and push to the local registry: say which one is missing."""
    import httpx

    if shutil.which("docker") is None:
        raise SystemExit("needs the Docker engine with buildx (scripts/host-setup)")
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except httpx.HTTPError:
        raise SystemExit(f"needs the registry at {REGISTRY} (scripts/host-setup)") from None


def build_pushed(bench: str, label: str, base: str, python: str, **kwargs: Any) -> tuple[Any, float, str]:
    """One timed ``build_images`` of the image benchmarks (arm64 runtime on ``base``, pushed under PREFIX,
    quiet): its output, seconds and the runtime's ``repository@digest``."""
    from edge_deploy.images import build_images

    t0 = time.monotonic()
    out = build_images(
        registry=REGISTRY,
        image_prefix=PREFIX,
        l4t_base=base,
        converter_base=base,
        runtime_python=python,
        runtime_platforms=PLATFORM,
        push=True,
        progress="quiet",
        **kwargs,
    )
    seconds = time.monotonic() - t0
    print(f"{bench}: {label} build {seconds:.1f} s", flush=True)
    return out, seconds, f"{out.runtime.repository}@{out.runtime.digest}"


def run(args: Any = None) -> dict[str, Any]:
    from edge_deploy.model.sample import write_sample_policy

    require_harness()
    base = getattr(args, "images_base", None) or f"{REGISTRY}/edge-deploy/l4t-standin:r36.4"
    python = getattr(args, "images_runtime_python", None) or "3.11"
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    builds: dict[str, dict[str, Any]] = {}

    def build(label: str, precision: str = "fp32", overrides: tuple[str, ...] = ()) -> dict[str, Any]:
        _, seconds, ref = build_pushed(
            NAME,
            label,
            base,
            python,
            model_dir=work / "model",
            model="policy.pt",
            precision=precision,
            version=f"bench-{label}",
            overrides=overrides,
            bundle_out=work / f"bundle-{label}",
        )
        builds[label] = {
            "seconds": round(seconds, 1),
            "ref": ref,
            "image": _image(ref),
            "bundle_bytes": _dir_bytes(work / f"bundle-{label}"),
        }
        return builds[label]

    try:
        (work / "model").mkdir()
        write_sample_policy(work / "model" / "policy.pt")
        os.chmod(work / "model" / "policy.pt", 0o644)
        if not getattr(args, "images_no_cold", False):
            build("cold", overrides=("*.no-cache=true",))
            # The first build after a --no-cache one still re-runs steps whose cache it did not keep;
            # timed and reported, but "cached" is the next identical build.
            build("rebuild")
        cached = build("cached")
        model_only = build("model-only", precision="fp16")
        code_only = build("code-only", overrides=(f"runtime.context={_code_context(work)}",))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_img = _image(base)
    runtime = cached["image"]
    above = runtime["layer_bytes"] - base_img["layer_bytes"]
    own = {d: n for d, n in runtime["layers"].items() if d not in base_img["layers"]}
    above_unpacked = _unpacked_bytes(runtime["repo"], own)
    model_moved = _moved(cached["image"], model_only["image"])
    code_moved = _moved(cached["image"], code_only["image"])
    rows = [
        {
            "what": "runtime image above base (compressed)",
            "bytes": above,
            "mib": above / 2**20,
            "goal": "<= 150 MB",
            "met": above <= 150e6,
        },
        {
            "what": "runtime image above base (unpacked)",
            "bytes": above_unpacked,
            "mib": above_unpacked / 2**20,
            "goal": "<= 150 MB",
            "met": above_unpacked <= 150e6,
        },
        {
            "what": "model-only release moved (push = pull)",
            "bytes": model_moved["bytes"],
            "mib": model_moved["bytes"] / 2**20,
            "layers": model_moved["layers_changed"],
            "goal": f"<= model {model_only['bundle_bytes'] / 2**20:.2f} MiB + 1 MiB",
            "met": model_moved["bytes"] <= model_only["bundle_bytes"] + 2**20,
        },
        {
            "what": "code-only release moved (push = pull)",
            "bytes": code_moved["bytes"],
            "mib": code_moved["bytes"] / 2**20,
            "layers": code_moved["layers_changed"],
            "goal": "",
            "met": "",
        },
    ]
    for label, b in builds.items():
        rows.append({"what": f"build time: {label}", "seconds": b["seconds"]})
    result: dict[str, Any] = {
        "base": base,
        "platform": PLATFORM,
        "base_bytes": base_img["layer_bytes"],
        "runtime_bytes": runtime["layer_bytes"],
        "runtime_layers": len(runtime["layers"]),
        "model_bundle_bytes": model_only["bundle_bytes"],
        "rows": rows,
        "builds": {
            k: {"seconds": v["seconds"], "ref": v["ref"], "layer_bytes": v["image"]["layer_bytes"]}
            for k, v in builds.items()
        },
    }
    if "cold" in builds:
        result["cold_over_cached"] = round(builds["cold"]["seconds"] / cached["seconds"], 2)
    result["machine"] = f"{os.cpu_count()} CPUs; runtime image arm64 (RUN steps under QEMU), converter amd64"
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)  # others' work on a shared host skews timings
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
