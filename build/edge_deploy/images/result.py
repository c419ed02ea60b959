"""What an image build gives back: one result per image, and the build's as a whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.errors import EdgeError


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


@dataclass
class BuildResult:
    """Both images, the identity of the bundle baked into the runtime image, and where the time went."""

    images: dict[str, ImageResult]  # "converter", "runtime"
    bundle_sha256: str
    precision: str  # as the converter wrote it into bundle.json
    ros2: bool  # whether the runtime image installs the ROS 2 DDS binding
    variables: dict[str, str]  # the bake variables the images were built with
    timings: dict[str, float] = field(default_factory=dict)  # step → seconds
    # several models: each one's name, bundle_sha256 and precision (sorted by name); empty for one model
    models: list[dict[str, str]] = field(default_factory=list)

    @property
    def converter(self) -> ImageResult:
        return self.images["converter"]

    @property
    def runtime(self) -> ImageResult:
        return self.images["runtime"]

    @property
    def tags(self) -> dict[str, list[str]]:
        return {name: img.tags for name, img in self.images.items()}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``image build --json``)."""
        return {
            "images": {name: img.to_dict() for name, img in self.images.items()},
            "bundle_sha256": self.bundle_sha256,
            "precision": self.precision,
            "ros2": self.ros2,
            "variables": dict(self.variables),
            "timings": {step: round(s, 2) for step, s in self.timings.items()},
            "models": [dict(m) for m in self.models],
        }
