"""Locked wheelhouses: per image, platform and Python, every wheel pinned with its sha256.

A lock (docker/requirements/IMAGE-ARCH-pyX.Y.txt) is pip's own requirements format, ``--require-hashes``
ready, with a header naming the requirements it was made from (pyproject's extras, read by
docker/requirements.py). ``scripts/lock`` writes them: ``pip download`` resolves each set for its
platform and Python exactly as the build would, and each downloaded wheel is pinned with its hash. The
build refuses a lock whose header no longer matches pyproject (re-run scripts/lock).

torch for the converter is the CPU build: our machines have it in pip's find-links; elsewhere set
EDGE_TORCH_INDEX_URL to PyTorch's CPU index (TORCH_INDEX_URL in the docs), whose torch==2.13.0+cpu is the
wheel locked here.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from edge_deploy.images.process import run_tool
from edge_deploy.images.result import ImageError

LOCK_DIR = "docker/requirements"  # in a checkout (and a build context)
REQUIRES = "# requires: "
SOURCE = "# torch-index: "
TORCH_INDEX_ENV = "EDGE_TORCH_INDEX_URL"
# Where the converter's CPU torch comes from off our machines (recorded in the converter's lock).
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def lock_name(image: str, arch: str, python: str) -> str:
    """The lock file's name for ``image`` (converter, runtime) on ``arch`` with ``python``."""
    return f"{image}-{arch}-py{python}.txt"


@dataclass(frozen=True)
class Lock:
    path: Path
    requires: list[str]  # the requirements the lock was made from, in order
    pins: dict[str, str]  # canonical name → version

    def check(self, requirements: list[str]) -> None:
        """Raise when the lock was made from other requirements than ``requirements``."""
        if self.requires != list(requirements):
            added = sorted(set(requirements) - set(self.requires))
            removed = sorted(set(self.requires) - set(requirements))
            raise ImageError(
                f"{self.path.name} is out of date with pyproject.toml (added {added or 'none'}, removed "
                f"{removed or 'none'}): run scripts/lock."
            )


def read_lock(path: Path) -> Lock:
    """Parse a lock file's header and pins."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImageError(f"Cannot read the lock {path} ({exc.strerror}).") from None
    requires: list[str] = []
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(REQUIRES):
            requires.append(line[len(REQUIRES) :])
        elif line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            pins[str(canonicalize_name(name))] = rest.split()[0]
    return Lock(path, requires, pins)


def pip_download_cmd(dest: Path, *, arch: str, python: str) -> list[str]:
    """``pip download`` of binary wheels for ``arch``/``python`` (the images' platform and Python)."""
    from edge_deploy.images.wheelhouse import pip_platforms

    ver = python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest)]
    cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    cmd += ["--abi", f"cp{ver}", "--abi", "abi3", "--abi", "none"]
    for plat in pip_platforms(arch):
        cmd += ["--platform", plat]
    index = os.environ.get(TORCH_INDEX_ENV, "").strip()
    if index:
        cmd += ["--extra-index-url", index]
    return [*cmd, "--platform", "any"]


def write_lock(path: Path, requirements: list[str], *, image: str, arch: str, python: str) -> Lock:
    """Resolve ``requirements`` for ``arch``/``python`` with pip and write the lock with each wheel's hash."""
    with tempfile.TemporaryDirectory(prefix="edge-lock-") as tmp:
        run_tool(
            [*pip_download_cmd(Path(tmp), arch=arch, python=python), *requirements],
            what=f"Resolving {image} for linux/{arch} Python {python}",
        )
        entries: list[tuple[str, str, str]] = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            parsed = parse_wheel_filename(wheel.name)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            entries.append((str(parsed[0]), str(parsed[1]), digest))
    lines = [
        f"# {image}, linux/{arch}, Python {python}: every wheel its build installs, pinned with its hash.",
        "# Written by scripts/lock from pyproject.toml's extras; do not edit (re-run scripts/lock).",
    ]
    if image == "converter":
        lines.append(f"{SOURCE}{DEFAULT_TORCH_INDEX} (set {TORCH_INDEX_ENV}; our machines: find-links)")
    lines += [f"{REQUIRES}{r}" for r in requirements]
    for pin, version, digest in sorted(entries):
        lines += [f"{pin}=={version} \\", f"    --hash=sha256:{digest}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return read_lock(path)


def runtime_pythons() -> list[str]:
    """The runtime Pythons locked: the JetPack table's default row's and its stand-in base's."""
    from edge_runtime.jetpack import versions

    row = versions().default
    found = [row.python, *([row.standin.python] if row.standin else [])]
    return list(dict.fromkeys(found))


def lock_all(checkout: Path, *, only_missing: bool = False) -> list[Path]:
    """Write every lock of ``checkout`` (scripts/lock); return their paths."""
    from edge_deploy.images.build import DEFAULT_CONVERTER_PYTHON, TORCH_SPEC
    from edge_deploy.images.wheelhouse import lock_sets

    written = []
    for python in runtime_pythons():
        sets = lock_sets(
            checkout / "pyproject.toml",
            checkout / "docker" / "requirements.py",
            runtime_python=python,
            converter_python=DEFAULT_CONVERTER_PYTHON,
            torch_spec=TORCH_SPEC,
        )
        for name, (requirements, arch, py) in sets.items():
            path = checkout / LOCK_DIR / name
            if path in written or (only_missing and path.is_file()):
                continue
            image = name.split("-", 1)[0]
            write_lock(path, requirements, image=image, arch=arch, python=py)
            written.append(path)
            print(f"lock: {path.relative_to(checkout)}")
    return written


def main(checkout: str) -> None:
    """scripts/lock: every lock of the checkout at ``checkout``; a failure is one sentence."""
    try:
        lock_all(Path(checkout))
    except ImageError as exc:
        sys.exit(str(exc))
