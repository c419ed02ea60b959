"""Disk hygiene for the Docker tests.

The Docker tests build converter and runtime images, push them to the local registry and fill BuildKit's
cache. On a host whose disk is shared with other work that can run it out of space half-way, and every
test after that fails for a reason that has nothing to do with it. So:

- before each file of Docker tests, when the disk holding Docker's data has less than
  ``EDGE_TEST_PRUNE_BELOW_GIB`` (20) GiB free, the build cache and dangling images are pruned;
- when even then less than ``EDGE_TEST_MIN_FREE_GIB`` (3) GiB is free, the file's tests fail in one
  sentence that says so, instead of dying one by one with ``No space left on device``;
- at the end of the session the images the session added under the registry's ``edge-deploy``
  repositories are removed from the local image store (they were pushed; the registry keeps them until
  its tags are deleted and ``scripts/host-prune`` collects the blobs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GIB = 2**30
REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
KEEP = ("/edge-deploy/l4t-standin:",)  # built once by scripts/host-setup; never removed here


def _gib(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str] | None:
    if shutil.which("docker") is None:
        return None
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ours(ref: str) -> bool:
    return ref.startswith(f"{REGISTRY}/edge-deploy") and not any(k in ref for k in KEEP)


class DiskKeeper:
    """Watches the free space under Docker's data root for one pytest session (see the module text)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.started = False
        self.images_at_start: set[str] = set()
        self.module: object = None
        self.pruned: list[str] = []
        self.failure = ""  # why the current file's Docker tests cannot run

    def start(self) -> None:
        """Find Docker's data root and note the images present; quietly nothing when no engine answers."""
        self.started = True
        info = _docker("info", "--format", "{{.DockerRootDir}}", timeout=60)
        if info is None or info.returncode != 0 or not info.stdout.strip():
            return
        root = Path(info.stdout.strip())
        self.root = root if root.exists() else Path("/")
        self.images_at_start = self._images()

    def _images(self) -> set[str]:
        listing = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", timeout=120)
        if listing is None or listing.returncode != 0:
            return set()
        return {ref for ref in listing.stdout.split() if not ref.endswith(":<none>")}

    def free(self) -> int:
        assert self.root is not None
        return shutil.disk_usage(self.root).free

    def before_file(self, module: object) -> None:
        if not self.started:
            self.start()
        if self.root is None:
            return
        if module is not self.module:
            self.module, self.failure = module, self._check(module)
        if self.failure:
            pytest.fail(self.failure, pytrace=False)

    def _check(self, module: object) -> str:
        """Prune when the disk is low; the sentence the file's tests fail with when it stays too low."""
        assert self.root is not None
        low, floor = _gib("EDGE_TEST_PRUNE_BELOW_GIB", 20), _gib("EDGE_TEST_MIN_FREE_GIB", 3)
        before = self.free()
        if before < low * GIB:
            _docker("builder", "prune", "--all", "--force")
            _docker("image", "prune", "--force")
            after = self.free()
            self.pruned.append(
                f"{getattr(module, '__name__', module)}: {before / GIB:.1f} GiB free under {self.root}; "
                f"pruning the build cache and dangling images left {after / GIB:.1f} GiB"
            )
        free = self.free()
        if free >= floor * GIB:
            return ""
        return (
            f"The disk holding {self.root} has {free / GIB:.1f} GiB free even after pruning the build "
            f"cache, and the Docker tests need at least {floor:g} GiB (scripts/host-prune frees more)."
        )

    def finish(self) -> list[str]:
        """Remove the images this session added under the registry's edge-deploy repositories."""
        if self.root is None:
            return []
        added = sorted(ref for ref in self._images() - self.images_at_start if _ours(ref))
        for start in range(0, len(added), 50):
            _docker("image", "rm", *added[start : start + 50])
        return added


KEEPER = DiskKeeper()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is not None:
        KEEPER.before_file(item.module)


def pytest_sessionfinish(session: pytest.Session) -> None:
    removed = KEEPER.finish()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for line in KEEPER.pruned:
        reporter.write_line(f"disk: {line}")
    if removed:
        reporter.write_line(f"disk: removed {len(removed)} test images from the local image store")
