"""Build the converter and runtime images with ``docker buildx bake`` and report digests and sizes.

Builds are offline and reproducible: the host fills one wheelhouse per image with ``pip download`` for the
image's platform and Python (the builder's default network has no outside route, and bake cannot grant a
build host networking), then the Dockerfiles install with ``--no-index``. The runtime image is built in two
bake calls: first the ``bundle`` target exports the converted bundle, so its sha256 can label the image,
then ``converter`` + ``runtime`` (the model stage is cached from the first call).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeError
from edge_runtime.jetpack import versions

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
BAKE_FILE = REPO_ROOT / "docker" / "docker-bake.hcl"
REQUIREMENTS_PY = REPO_ROOT / "docker" / "requirements.py"
WHEELHOUSE_ROOT = REPO_ROOT / ".edge" / "wheelhouse"
# Bases and Pythons come from the JetPack table's default row (the converter's from the table too); our
# stand-in base has its own Python (the row's ``standin.python``), passed with --runtime-python.
DEFAULT_L4T_BASE = str(versions().default.base_image)
DEFAULT_CONVERTER_BASE = versions().converter_base
DEFAULT_CONVERTER_PYTHON = versions().converter_python
DEFAULT_RUNTIME_PYTHON = os.environ.get("EDGE_RUNTIME_PYTHON", versions().default.python)
# pip for the builds themselves, from the wheelhouse: the runtime image must not rely on the base having
# python3-pip or ensurepip (l4t-jetpack may ship neither). pip download picks the newest that runs on the
# image's Python.
BUILD_PIP = "pip>=23,<27"
MANYLINUX = (
    "manylinux_2_17",
    "manylinux2014",
    "manylinux_2_24",
    "manylinux_2_27",
    "manylinux_2_28",
    "manylinux_2_31",
    "manylinux_2_34",
    "manylinux_2_35",
)


class ImageError(EdgeError):
    """An image could not be built, pushed or inspected."""


@dataclass
class ImageResult:
    target: str
    tags: list[str]
    digest: str | None  # pushed index or manifest digest (sha256:…); None when not pushed
    platforms: dict[str, str] = field(default_factory=dict)  # platform → manifest digest
    size_bytes: int = 0  # compressed layer bytes of the (first) platform manifest
    config_digest: str | None = None
    seconds: float = 0.0

    @property
    def repository(self) -> str:
        return self.tags[0].rsplit(":", 1)[0] if self.tags else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    what: str,
    stream: bool = False,
    cwd: Path = REPO_ROOT,
) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", " ".join(cmd))
    try:
        # the bake file's contexts ("." and docker/…) are relative to the working directory: the checkout
        proc = subprocess.run(
            list(cmd),
            env=env,
            text=True,
            check=False,
            cwd=cwd,
            stdout=None if stream else subprocess.PIPE,
            stderr=None if stream else subprocess.PIPE,
        )
    except FileNotFoundError:
        raise ImageError(f"{what} failed: {cmd[0]} is not installed (run scripts/host-setup).") from None
    if proc.returncode != 0:
        tail = "" if stream else (proc.stderr or proc.stdout or "").strip().splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        raise ImageError(f"{what} failed (exit {proc.returncode}){detail}")
    return proc


def pip_platforms(arch: str) -> list[str]:
    machine = {"arm64": "aarch64", "amd64": "x86_64"}[arch]
    return [f"{tag}_{machine}" for tag in MANYLINUX]


def runtime_extras(context: Path = REPO_ROOT) -> str:
    """The extras a checkout's runtime image installs: its runtime.Dockerfile's ``RUNTIME_EXTRAS`` default
    (the one place they are named; "device" for checkouts from before the image installed cuda-python)."""
    try:
        text = (context / "docker" / "runtime.Dockerfile").read_text()
    except OSError:
        return "device"
    found = re.search(r"^ARG RUNTIME_EXTRAS=([\w,-]+)[ \t]*$", text, re.M)
    return found.group(1) if found else "device"


def requirements_for(extra: str, pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """Requirements of ``extra`` (comma-separated extras) plus the base dependencies, from pyproject.toml."""
    proc = _run([sys.executable, str(REQUIREMENTS_PY), str(pyproject), extra], what="Reading pyproject.toml")
    return [line for line in proc.stdout.splitlines() if line.strip()]


def runtime_has_ros2(pyproject: Path) -> bool:
    """Whether the runtime image built from ``pyproject`` (and the Dockerfile beside it) can serve ROS 2: its
    extras (what the image installs) include the DDS binding."""
    return has_ros2(requirements_for(runtime_extras(pyproject.parent), pyproject))


def has_ros2(device_requirements: list[str]) -> bool:
    from packaging.requirements import Requirement

    return any(Requirement(r).name == "cyclonedds" for r in device_requirements)


def fill_wheelhouse(
    dest: Path, requirements: list[str], *, arch: str, python: str, stamp_name: str = ".requirements"
) -> Path:
    """``pip download`` binary wheels for ``arch``/``python`` into ``dest`` (kept between builds).

    One directory may hold several architectures (one ``stamp_name`` per arch); pip picks by wheel tag.
    """
    dest.mkdir(parents=True, exist_ok=True)
    stamp = dest / stamp_name
    wanted = "\n".join([arch, python, *requirements])
    if stamp.exists() and stamp.read_text() == wanted and any(dest.glob("*.whl")):
        return dest
    ver = python.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        f"cp{ver}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for plat in pip_platforms(arch):
        cmd += ["--platform", plat]
    cmd += ["--platform", "any", *requirements]
    _run(cmd, what=f"Downloading wheels for linux/{arch} Python {python}")
    stamp.write_text(wanted)
    return dest


def prepare_wheelhouses(
    *,
    runtime_python: str,
    device: list[str],
    converter_python: str = DEFAULT_CONVERTER_PYTHON,
    root: Path = WHEELHOUSE_ROOT,
    torch_spec: str = "torch==2.13.0",
    pyproject: Path = REPO_ROOT / "pyproject.toml",
) -> dict[str, Path]:
    """Fill the converter's and the runtime's wheelhouses; ``device`` is the runtime image's requirements
    (``runtime_extras``). Each also holds a pip wheel, which the builds run from the wheelhouse."""
    host = [r for r in requirements_for("host", pyproject) if not r.startswith("torch")]
    converter = fill_wheelhouse(
        root / "converter",
        [torch_spec, *host, "hatchling>=1.21,<2", BUILD_PIP],
        arch="amd64",
        python=converter_python,
    )
    runtime = fill_wheelhouse(
        root / f"runtime-py{runtime_python}", [*device, BUILD_PIP], arch="arm64", python=runtime_python
    )
    runtime_amd64 = fill_wheelhouse(
        root / f"runtime-amd64-py{runtime_python}", [*device, BUILD_PIP], arch="amd64", python=runtime_python
    )
    return {"converter": converter, "runtime": runtime, "runtime_amd64": runtime_amd64}


def runtime_wheelhouse(
    platforms: str, houses: dict[str, Path], *, python: str, device: list[str], root: Path = WHEELHOUSE_ROOT
) -> Path:
    """The wheelhouse for the runtime's platforms: per-arch directories, or one holding both arches."""
    plats = [p.strip() for p in platforms.split(",") if p.strip()]
    if plats == ["linux/arm64"]:
        return houses["runtime"]
    if plats == ["linux/amd64"]:
        return houses["runtime_amd64"]
    if not plats or not set(plats) <= {"linux/arm64", "linux/amd64"}:
        raise ImageError(
            f"Runtime platforms {platforms!r} are not supported (linux/arm64 and/or linux/amd64)."
        )
    both = root / f"runtime-multi-py{python}"
    for arch in ("arm64", "amd64"):
        fill_wheelhouse(
            both, [*device, BUILD_PIP], arch=arch, python=python, stamp_name=f".requirements-{arch}"
        )
    return both


def _variables_env(variables: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in variables.items()})
    return env


def bake(
    targets: list[str],
    *,
    push: bool = False,
    variables: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    metadata_file: Path | None = None,
    progress: str = "auto",
    context: Path = REPO_ROOT,
) -> dict[str, ImageResult]:
    """Run ``docker buildx bake`` for ``targets`` in the checkout ``context`` (its docker/ files and "."
    as the build context); return each target's tags, digest and size."""
    variables = dict(variables or {})
    bake_file = context / BAKE_FILE.relative_to(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="edge-bake-") as tmp:
        meta = metadata_file or Path(tmp) / "metadata.json"
        cmd = [
            "docker",
            "buildx",
            "bake",
            "-f",
            str(bake_file),
            "--metadata-file",
            str(meta),
            "--progress",
            progress,
        ]
        if push:
            cmd.append("--push")
        for o in overrides or []:
            cmd += ["--set", o]
        cmd += targets
        t0 = time.monotonic()
        _run(
            cmd,
            env=_variables_env(variables),
            what=f"docker buildx bake {' '.join(targets)}",
            stream=True,
            cwd=context,
        )
        seconds = time.monotonic() - t0
        metadata = json.loads(meta.read_text()) if meta.exists() else {}
    tags = resolved_tags(targets, variables, context)
    results = {}
    for target in targets:
        md = metadata.get(target, {})
        digest = md.get("containerimage.digest")
        result = ImageResult(
            target=target,
            tags=tags.get(target, []),
            digest=digest if push else None,
            config_digest=md.get("containerimage.config.digest"),
            seconds=seconds,
        )
        if push and digest and result.tags:
            inspect_pushed(result)
        results[target] = result
    return results


def resolved_tags(
    targets: list[str], variables: dict[str, str], context: Path = REPO_ROOT
) -> dict[str, list[str]]:
    bake_file = context / BAKE_FILE.relative_to(REPO_ROOT)
    proc = _run(
        ["docker", "buildx", "bake", "-f", str(bake_file), "--print", *targets],
        env=_variables_env(variables),
        what="docker buildx bake --print",
        cwd=context,
    )
    printed = json.loads(proc.stdout)
    return {name: list(t.get("tags") or []) for name, t in printed.get("target", {}).items()}


def inspect_pushed(result: ImageResult) -> None:
    """Fill per-platform manifest digests and compressed size from the registry."""
    ref = f"{result.repository}@{result.digest}"
    proc = _run(["docker", "buildx", "imagetools", "inspect", "--raw", ref], what=f"Inspecting {ref}")
    index = json.loads(proc.stdout)
    manifests = index.get("manifests")
    if manifests is None:  # a single-platform manifest
        result.size_bytes = sum(layer.get("size", 0) for layer in index.get("layers", []))
        return
    for m in manifests:
        plat = m.get("platform") or {}
        if plat.get("os") == "unknown":  # attestation manifests
            continue
        name = f"{plat.get('os')}/{plat.get('architecture')}" + (
            f"/{plat['variant']}" if plat.get("variant") else ""
        )
        result.platforms[name] = m["digest"]
    first = next(iter(result.platforms.values()), None)
    if first:
        sub = json.loads(
            _run(
                ["docker", "buildx", "imagetools", "inspect", "--raw", f"{result.repository}@{first}"],
                what="Inspecting a platform manifest",
            ).stdout
        )
        result.size_bytes = sum(layer.get("size", 0) for layer in sub.get("layers", []))


def export_bundle(
    variables: dict[str, str], dest: Path, progress: str = "auto", context: Path = REPO_ROOT
) -> dict[str, Any]:
    """Run the converter's model stage and export the bundle to ``dest``; return its bundle.json."""
    bake(
        ["bundle"],
        variables=variables,
        overrides=[f"bundle.output=type=local,dest={dest}"],
        progress=progress,
        context=context,
    )
    try:
        return dict(json.loads((dest / "bundle.json").read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageError(f"The model stage produced no readable bundle.json in {dest} ({exc}).") from None


def git_sha(root: Path = REPO_ROOT) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], text=True, capture_output=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_images(
    *,
    model_dir: Path,
    model: str,
    precision: str = "fp16",
    calibration: str = "",
    version: str = "dev",
    registry: str = "localhost:5000",
    image_prefix: str = "edge-deploy",
    l4t_base: str | None = None,
    converter_base: str | None = None,
    runtime_python: str | None = None,
    runtime_platforms: str = "linux/arm64",
    tags: Sequence[str] = (),
    push: bool = False,
    overrides: Sequence[str] = (),
    progress: str = "auto",
    bundle_out: Path | None = None,
    on_step: Callable[[str], None] = lambda s: None,
    context: Path = REPO_ROOT,
) -> dict[str, Any]:
    """Wheelhouses → bundle export → bake converter + runtime; return results and the bundle's identity.

    ``context`` is the checkout built (its pyproject, docker/ files and sources; a release passes its own).
    ``bundle_out`` keeps a copy of the bundle baked into the runtime image (for checks on the host).
    """
    if not (model_dir / model).exists():
        raise ImageError(f"Model {model_dir / model} does not exist.")
    python = runtime_python or DEFAULT_RUNTIME_PYTHON
    on_step(f"wheelhouses (runtime Python {python})")
    pyproject = context / "pyproject.toml"
    device = requirements_for(runtime_extras(context), pyproject)
    houses = prepare_wheelhouses(runtime_python=python, device=device, pyproject=pyproject)
    variables = {
        "REGISTRY": registry,
        "IMAGE_PREFIX": image_prefix,
        "VERSION": version,
        "TAGS": ",".join(tags),
        "MODEL_DIR": str(model_dir.resolve()),
        "MODEL": model,
        "PRECISION": precision,
        "CALIBRATION": calibration,
        "WHEELHOUSE": str(houses["converter"]),
        "RUNTIME_WHEELHOUSE": str(
            runtime_wheelhouse(runtime_platforms, houses, python=python, device=device)
        ),
        "RUNTIME_PLATFORMS": runtime_platforms,
        "GIT_SHA": git_sha(context),
        "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # the table's bases, passed explicitly: the bake file's own defaults are copies (checked for drift)
    variables["L4T_BASE"] = l4t_base or DEFAULT_L4T_BASE
    variables["CONVERTER_BASE"] = converter_base or DEFAULT_CONVERTER_BASE
    with tempfile.TemporaryDirectory(prefix="edge-bundle-") as tmp:
        on_step("model stage → bundle")
        exported = Path(tmp) / "bundle"
        manifest = export_bundle(variables, exported, progress=progress, context=context)
        if bundle_out is not None:
            shutil.rmtree(bundle_out, ignore_errors=True)
            shutil.copytree(exported, bundle_out)
    variables["BUNDLE_SHA256"] = str(manifest.get("bundle_sha256", ""))
    variables["PRECISION"] = str(manifest.get("precision", precision))
    on_step("bake converter + runtime" + (" --push" if push else ""))
    results = bake(
        ["converter", "runtime"],
        push=push,
        variables=variables,
        overrides=list(overrides),
        progress=progress,
        context=context,
    )
    return {
        "images": {k: v.to_dict() for k, v in results.items()},
        "bundle_sha256": variables["BUNDLE_SHA256"],
        "precision": variables["PRECISION"],
        "ros2": has_ros2(device),
        "variables": variables,
        "results": results,
    }
