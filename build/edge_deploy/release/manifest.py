"""The release manifest: what a version *is* (image digests, bundle, signatures), stored as
``releases/<VERSION>.json`` in the repository (reviewed and diffed like code; CI also uploads it as an
artifact). Nothing after a release refers to an image by tag alone: rollouts read digests from here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeError

SCHEMA_VERSION = 1
DEFAULT_RELEASES_DIR = Path("releases")
# What a release asks of the backend robots serve it with (``required_backend``): None lets each robot's
# inventory decide (``gpu: true`` → TensorRT unless ``allow_cpu_fallback``); "tensorrt" requires TensorRT on
# every robot; "any" accepts ONNX Runtime on the CPU everywhere, on purpose (e.g. a CPU-only trial release).
REQUIRED_BACKENDS = ("tensorrt", "any")


class ReleaseError(EdgeError):
    """A release cannot be made, found or trusted."""


@dataclass
class ReleaseImage:
    """One image of a release, identified by digest; tags are for people."""

    repository: str  # e.g. localhost:5000/edge-deploy/runtime
    digest: str  # sha256:… of the pushed index (or single manifest)
    platforms: dict[str, str] = field(default_factory=dict)  # "linux/arm64" -> manifest digest
    tags: list[str] = field(default_factory=list)
    size_bytes: int = 0
    signature: str | None = None  # reference of the cosign signature (e.g. repo:sha256-….sig)

    @property
    def ref(self) -> str:
        """The pinned reference robots use: ``repository@sha256:…``."""
        return f"{self.repository}@{self.digest}"


@dataclass
class ReleaseManifest:
    version: str
    git_sha: str
    created: str
    images: dict[str, ReleaseImage]  # "runtime", "converter"
    bundle_sha256: str
    precision: str
    base_image: str
    channels: list[str] = field(default_factory=list)
    pushed_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    required_backend: str | None = None  # see REQUIRED_BACKENDS; the fleet's health gate enforces it

    def __post_init__(self) -> None:
        if self.required_backend is not None and self.required_backend not in REQUIRED_BACKENDS:
            raise ReleaseError(
                f"Release {self.version} has required_backend {self.required_backend!r}; expected one of "
                f"{', '.join(REQUIRED_BACKENDS)} (or none: the robots' inventory decides)."
            )

    @property
    def runtime(self) -> ReleaseImage:
        try:
            return self.images["runtime"]
        except KeyError:
            raise ReleaseError(f"Release {self.version} has no runtime image.") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def for_runtime_image(
        cls, version: str, ref: str, source: str = "external", required_backend: str | None = None
    ) -> ReleaseManifest:
        """A release of a runtime image that another pipeline built and pushed (``repo@sha256:…``), so
        rollout and rollback can pin it by digest; bundle and precision are not known here."""
        repository, sep, digest = ref.partition("@")
        if not sep or not digest.startswith("sha256:"):
            raise ReleaseError(f"Image reference {ref!r} is not pinned by digest (repository@sha256:…).")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(
            version,
            source,
            created,
            {"runtime": ReleaseImage(repository, digest)},
            "",
            "unknown",
            "unknown",
            required_backend=required_backend,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseManifest:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ReleaseError(
                f"Release manifest has schema version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}."
            )
        try:
            images = {k: ReleaseImage(**v) for k, v in d["images"].items()}
            return cls(**{**d, "images": images})
        except (KeyError, TypeError) as exc:
            raise ReleaseError(f"Release manifest is malformed ({exc}).") from None


def manifest_path(version: str, releases_dir: Path = DEFAULT_RELEASES_DIR) -> Path:
    return releases_dir / f"{version}.json"


def load_release(version: str, releases_dir: Path = DEFAULT_RELEASES_DIR) -> ReleaseManifest:
    path = manifest_path(version, releases_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"Release {version} is unknown: {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"Release manifest {path} cannot be read ({exc}).") from None
    return ReleaseManifest.from_dict(data)


def save_release(manifest: ReleaseManifest, releases_dir: Path = DEFAULT_RELEASES_DIR) -> Path:
    """Write atomically (temp file + rename) so a failed release never leaves half a manifest."""
    releases_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_path(manifest.version, releases_dir)
    fd, tmp = tempfile.mkstemp(dir=releases_dir, prefix=f".{manifest.version}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_releases(releases_dir: Path = DEFAULT_RELEASES_DIR) -> list[ReleaseManifest]:
    if not releases_dir.is_dir():
        return []
    return [load_release(p.stem, releases_dir) for p in sorted(releases_dir.glob("*.json"))]
