"""Offline builds' wheels: ``pip download`` for each image's platform and Python, into wheelhouses kept
between builds (the builder's default network has no outside route, and the Dockerfiles install with
``--no-index``). What goes in comes from pyproject.toml's extras, read by the same docker/requirements.py
the images run."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from filelock import FileLock

from edge_deploy.images.lock import lock_name, pip_download_cmd, read_lock
from edge_deploy.images.process import run_tool
from edge_deploy.images.result import ImageError

# pip for the builds themselves, from the wheelhouse: the runtime image must not rely on the base having
# python3-pip or ensurepip (l4t-jetpack may ship neither). pip download picks the newest that runs on the
# image's Python.
BUILD_PIP = "pip>=23,<27"
BUILD_HATCHLING = "hatchling>=1.21,<2"  # the converter installs the project from source
log = logging.getLogger(__name__)
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


def pip_platforms(arch: str) -> list[str]:
    """The ``pip download --platform`` tags for a Docker arch (amd64, arm64)."""
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch)
    if machine is None:
        raise ImageError(f"Architecture {arch!r} is not supported (amd64 or arm64).")
    return [f"{tag}_{machine}" for tag in MANYLINUX]


def runtime_extras(runtime_dockerfile: Path) -> str:
    """The extras the runtime image installs: its Dockerfile's ``RUNTIME_EXTRAS`` default (the one place
    they are named; "device" for a Dockerfile from before the image installed cuda-python)."""
    try:
        text = runtime_dockerfile.read_text()
    except OSError:
        return "device"
    found = re.search(r"^ARG RUNTIME_EXTRAS=([\w,-]+)[ \t]*$", text, re.M)
    return found.group(1) if found else "device"


def requirements_for(extra: str, pyproject: Path, requirements_py: Path) -> list[str]:
    """Requirements of ``extra`` (comma-separated extras) plus the base dependencies, from ``pyproject``."""
    proc = run_tool(
        [sys.executable, str(requirements_py), str(pyproject), extra], what=f"Reading {pyproject}"
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def has_ros2(device_requirements: list[str]) -> bool:
    """Whether requirements include the ROS 2 DDS binding (the runtime can then serve ROS 2)."""
    from packaging.requirements import Requirement

    return any(Requirement(r).name == "cyclonedds" for r in device_requirements)


def dockerfile_builds_ros2(runtime_dockerfile: Path) -> bool:
    """Whether a runtime Dockerfile compiles the ROS 2 DDS binding in its ``ros2`` stage (Cyclone DDS 0.10,
    docs/ros2.md) and installs it: PyPI has no arm64 wheel, so the image builds it rather than its extras."""
    try:
        text = runtime_dockerfile.read_text()
    except OSError:
        return False
    return bool(re.search(r"^FROM \S+ AS ros2[ \t]*$", text, re.M)) and "from=ros2," in text


def fill_wheelhouse(
    dest: Path,
    requirements: list[str],
    *,
    arch: str,
    python: str,
    stamp_name: str = ".requirements",
    lock: Path | None = None,
) -> Path:
    """``pip download`` binary wheels for ``arch``/``python`` into ``dest`` (kept between builds).

    With a ``lock`` (images/lock.py) that exists, exactly its wheels are downloaded, each checked against
    its hash (``--require-hashes``), into a fresh directory that then replaces ``dest``, so no wheel of an
    earlier lock stays for pip to pick; a lock made from other requirements is refused. Without one (a
    platform or Python no lock covers), the ranges are resolved as they stand, into ``dest``.
    A lock beside ``dest`` keeps two builds from filling it at once.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock")):
        locked = lock is not None and lock.is_file()
        if locked:
            assert lock is not None
            read_lock(lock).check(requirements)
        stamp = dest / stamp_name
        wanted = "\n".join([arch, python, *requirements, lock.read_text() if locked and lock else ""])
        if stamp.exists() and stamp.read_text() == wanted and any(dest.glob("*.whl")):
            return dest
        if not locked:
            if lock is not None:
                log.warning("no lock %s: resolving the requirements' ranges for %s", lock.name, dest.name)
            dest.mkdir(parents=True, exist_ok=True)
            cmd = pip_download_cmd(dest, arch=arch, python=python)
            run_tool([*cmd, *requirements], what=f"Downloading wheels for linux/{arch} Python {python}")
            stamp.write_text(wanted)
            return dest
        assert lock is not None
        fresh = dest.parent / f".{dest.name}.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        cmd = pip_download_cmd(fresh, arch=arch, python=python)
        if dest.is_dir():  # wheels already here are reused (pip still checks their hashes)
            cmd += ["--find-links", str(dest)]
        cmd += ["--require-hashes", "--no-deps", "-r", str(lock)]
        run_tool(cmd, what=f"Downloading the locked wheels of {lock.name}")
        (fresh / stamp_name).write_text(wanted)
        shutil.rmtree(dest, ignore_errors=True)
        fresh.rename(dest)
    return dest


def lock_sets(
    pyproject: Path, requirements_py: Path, *, runtime_python: str, converter_python: str, torch_spec: str
) -> dict[str, tuple[list[str], str, str]]:
    """Each lock's name → (requirements, arch, Python): the converter's (amd64) and the runtime's per
    platform for ``runtime_python``. The same lists the build downloads, so a lock checks against them."""
    host = [r for r in requirements_for("host", pyproject, requirements_py) if not r.startswith("torch")]
    extras = runtime_extras(requirements_py.parent / "runtime.Dockerfile")
    device = requirements_for(extras, pyproject, requirements_py)
    sets = {
        lock_name("converter", "amd64", converter_python): (
            [torch_spec, *host, BUILD_HATCHLING, BUILD_PIP],
            "amd64",
            converter_python,
        )
    }
    for arch in ("arm64", "amd64"):
        sets[lock_name("runtime", arch, runtime_python)] = ([*device, BUILD_PIP], arch, runtime_python)
    return sets


def prepare_wheelhouses(
    *,
    root: Path,
    runtime_python: str,
    device: list[str],
    host: list[str],
    converter_python: str,
    torch_spec: str,
    locks: Path | None = None,
) -> dict[str, Path]:
    """Fill the converter's (``host`` requirements, torch apart) and the runtime's (``device``) wheelhouses
    under ``root``, from the locks in ``locks`` (docker/requirements) where given. Each also holds a pip
    wheel, which the builds run from the wheelhouse."""
    host = [r for r in host if not r.startswith("torch")]

    def lock(image: str, arch: str, python: str) -> Path | None:
        return locks / lock_name(image, arch, python) if locks is not None else None

    converter = fill_wheelhouse(
        root / "converter",
        [torch_spec, *host, BUILD_HATCHLING, BUILD_PIP],
        arch="amd64",
        python=converter_python,
        lock=lock("converter", "amd64", converter_python),
    )
    runtime = fill_wheelhouse(
        root / f"runtime-py{runtime_python}",
        [*device, BUILD_PIP],
        arch="arm64",
        python=runtime_python,
        lock=lock("runtime", "arm64", runtime_python),
    )
    runtime_amd64 = fill_wheelhouse(
        root / f"runtime-amd64-py{runtime_python}",
        [*device, BUILD_PIP],
        arch="amd64",
        python=runtime_python,
        lock=lock("runtime", "amd64", runtime_python),
    )
    return {"converter": converter, "runtime": runtime, "runtime_amd64": runtime_amd64}


def runtime_wheelhouse(
    platforms: str, houses: dict[str, Path], *, python: str, device: list[str], root: Path
) -> Path:
    """The wheelhouse for the runtime's platforms: per-arch directories, or one holding both arches'
    wheels (linked from the per-arch ones; pip picks by wheel tag)."""
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
    with FileLock(str(root / f".{both.name}.lock")):
        shutil.rmtree(both, ignore_errors=True)
        both.mkdir(parents=True)
        for house in (houses["runtime"], houses["runtime_amd64"]):
            for wheel in house.glob("*.whl"):
                if not (both / wheel.name).exists():
                    os.link(wheel, both / wheel.name)
    return both


def runtime_has_ros2(pyproject: Path) -> bool:
    """Whether the runtime image built from ``pyproject`` (and the runtime.Dockerfile of the checkout around
    it) can serve ROS 2: its extras (what the image installs) include the DDS binding, or its Dockerfile
    builds it."""
    from edge_deploy.images.files import tool_files

    dockerfile = pyproject.parent / "docker" / "runtime.Dockerfile"
    reqs = requirements_for(
        runtime_extras(dockerfile), pyproject, tool_files().require("docker/requirements.py")
    )
    return has_ros2(reqs) or dockerfile_builds_ros2(dockerfile)
