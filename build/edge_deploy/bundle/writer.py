"""Write a model bundle atomically: files go to a temp dir beside the target, are fsynced, then renamed.

A failed or interrupted run leaves no half-written bundle: the temp dir is removed and an existing bundle
at the target stays as it was until the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from edge_deploy.errors import OutputError
from edge_runtime.bundle import MANIFEST, BundleManifest, ModelBundle, sha256_file
from edge_runtime.cache import fsync_dir


def check_writable(target: Path, force: bool = False) -> None:
    """Fail early, before any slow step, if the bundle cannot be written at ``target``."""
    if target.exists() and not target.is_dir():
        raise OutputError(f"Output path {target} exists and is not a directory.")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputError(
            f"Output directory {target} already exists and is not empty; pass `force` to replace it.",
            option="force",
        )
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"Output directory {target.parent} cannot be created: {parent} is not a directory.")
    try:  # a real probe: os.access says yes to root even on read-only file systems
        os.rmdir(tempfile.mkdtemp(prefix=".edge-probe-", dir=parent))
    except OSError as exc:
        raise OutputError(f"Output directory {target.parent} is not writable ({exc.strerror}).") from None


class BundleWriter:
    """``with BundleWriter(target) as w: write files into w.tmp; w.commit(manifest)``."""

    def __init__(self, target: str | Path, force: bool = False) -> None:
        self.target = Path(target).absolute()
        self.force = force
        self.tmp: Path = Path()

    def __enter__(self) -> BundleWriter:
        check_writable(self.target, self.force)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(
                tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial", dir=self.target.parent)
            )
        except OSError as exc:
            raise OutputError(
                f"Output directory {self.target.parent} is not writable ({exc.strerror})."
            ) from None
        return self

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, manifest: BundleManifest) -> ModelBundle:
        """Hash every file, write bundle.json, fsync, and move the bundle into place."""
        manifest.files = {
            p.name: sha256_file(p) for p in sorted(self.tmp.iterdir()) if p.is_file() and p.name != MANIFEST
        }
        (self.tmp / MANIFEST).write_text(manifest.to_json())
        for p in self.tmp.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a bundle is read by other users
        fsync_dir(self.tmp)
        old: Path | None = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return ModelBundle.load(self.target)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.tmp != Path() and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
