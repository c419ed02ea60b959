"""The release manifest: what a version *is* (image digests, bundle, signatures), stored as
``releases/<VERSION>.json`` in the repository (reviewed and diffed like code; CI also uploads it as an
artifact). Nothing after a release refers to an image by tag alone: rollouts read digests from here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_deploy.release.tags import VersionError, check_version
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
class ReleaseModel:
    """One model of a release of several (each its own layer at /opt/edge/models/<name>/ of the runtime
    image), identified by its bundle's sha256."""

    name: str
    bundle_sha256: str
    precision: str


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
    # Whether the runtime image can serve ROS 2 (its DDS binding is installed); a rollout with ROS 2 is
    # refused when False. None: not recorded (a manifest of a runtime image built elsewhere).
    ros2: bool | None = None
    # A release of several models: each one (sorted by name); ``bundle_sha256`` is then the digest of them
    # all. Empty for a release of one model (``bundle_sha256`` and ``precision`` are its own).
    models: list[ReleaseModel] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ros2 is None and isinstance(self.extra.get("ros2"), bool):
            # Manifests written before ros2 was a field kept it in extra: read it from there, write it here.
            extra = dict(self.extra)
            self.ros2 = bool(extra.pop("ros2"))
            self.extra = extra
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
        check_version(version)
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
    def from_dict(cls, d: Any, source: str = "Release manifest") -> ReleaseManifest:
        """Check every field's type before building the dataclasses (a manifest is input: a hand edit or
        a bad merge must end in one sentence, never deep inside a rollout); ``source`` starts the
        sentence (``Release manifest releases/0.1.0.json``)."""
        try:
            return cls._from_checked(_checked_manifest(d))
        except _Malformed as exc:
            raise ReleaseError(f"{source} {exc}.") from None

    @classmethod
    def _from_checked(cls, d: dict[str, Any]) -> ReleaseManifest:
        images = {k: ReleaseImage(**v) for k, v in d["images"].items()}
        models = [ReleaseModel(**m) for m in d.get("models") or []]
        return cls(**{**d, "images": images, "models": models})


class _Malformed(Exception):
    """What is wrong with a manifest document, as the end of a sentence about it."""


def _expect(ok: bool, fld: str, expected: str, value: Any, image: str | None = None) -> None:
    if not ok:
        where = f"{fld!r}" if image is None else f"{fld!r} in image {image!r}"
        raise _Malformed(f"has an invalid {where}: expected {expected}, got {json.dumps(value)[:60]}")


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checked_image(name: str, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _Malformed(
            f"has an invalid image {name!r}: expected a mapping with 'repository' and 'digest', "
            f"got {json.dumps(d)[:60]}"
        )
    known = {f.name for f in fields(ReleaseImage)}
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise _Malformed(f"has an unknown field {unknown[0]!r} in image {name!r}")
    for key in ("repository", "digest"):
        _expect(isinstance(d.get(key), str) and bool(d[key]), key, "a non-empty string", d.get(key), name)
    if "platforms" in d:
        p = d["platforms"]
        ok = isinstance(p, dict) and all(isinstance(v, str) for v in p.values())
        _expect(ok, "platforms", "a mapping of platform to digest", p, name)
    if "tags" in d:
        _expect(_is_str_list(d["tags"]), "tags", "a list of tags", d["tags"], name)
    if "size_bytes" in d:
        _expect(_is_int(d["size_bytes"]), "size_bytes", "a whole number", d["size_bytes"], name)
    if d.get("signature") is not None:
        _expect(isinstance(d["signature"], str), "signature", "a reference or null", d["signature"], name)
    return d


def _checked_manifest(d: Any) -> dict[str, Any]:
    """``d`` when it is a well-formed manifest document; raises _Malformed naming the first problem."""
    if not isinstance(d, dict):
        raise _Malformed(f"is not a JSON object (it holds {type(d).__name__ if d is not None else 'null'})")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise _Malformed(f"has schema version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    known = {f.name for f in fields(ReleaseManifest)}
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise _Malformed(f"has an unknown field {unknown[0]!r}")
    for key in ("version", "git_sha", "created", "images", "bundle_sha256", "precision", "base_image"):
        if key not in d:
            raise _Malformed(f"has no {key!r}")
    for key in ("git_sha", "created", "bundle_sha256", "precision", "base_image"):
        _expect(isinstance(d[key], str), key, "a string", d[key])
    try:
        check_version(d["version"])
    except VersionError:
        _expect(False, "version", "a semantic version like 1.2.3", d["version"])
    images = d["images"]
    _expect(isinstance(images, dict), "images", "a mapping of image name to image", images)
    if "runtime" not in images:
        raise _Malformed("has no 'runtime' image under 'images'")
    for name, img in images.items():
        _checked_image(name, img)
    if "channels" in d:
        _expect(_is_str_list(d["channels"]), "channels", "a list of channel names", d["channels"])
    if d.get("pushed_bytes") is not None:
        _expect(_is_int(d["pushed_bytes"]), "pushed_bytes", "a whole number or null", d["pushed_bytes"])
    if "extra" in d:
        _expect(isinstance(d["extra"], dict), "extra", "a mapping", d["extra"])
    if d.get("ros2") is not None:
        _expect(isinstance(d["ros2"], bool), "ros2", "true, false or null", d["ros2"])
    if "models" in d:
        _checked_models(d["models"])
    return d


def _checked_models(models: Any) -> None:
    """``models``: a list of {name, bundle_sha256, precision}, names unique and as the runtime allows."""
    from edge_runtime.repository import MODEL_NAME

    expected = "a list of models, each with name, bundle_sha256 and precision"
    _expect(isinstance(models, list), "models", expected, models)
    keys = {f.name for f in fields(ReleaseModel)}
    names: list[str] = []
    for m in models:
        _expect(isinstance(m, dict) and set(m) == keys, "models", expected, m)
        _expect(all(isinstance(v, str) for v in m.values()), "models", expected, m)
        _expect(
            MODEL_NAME.match(m["name"]) is not None, "models", "model names as the runtime allows", m["name"]
        )
        _expect(m["name"] not in names, "models", "each model name once", m["name"])
        names.append(m["name"])


def manifest_path(version: str, releases_dir: Path = DEFAULT_RELEASES_DIR) -> Path:
    """``releases_dir/<version>.json``; the version is checked first, so it cannot name another path."""
    return releases_dir / f"{check_version(version)}.json"


def load_release(version: str, releases_dir: Path = DEFAULT_RELEASES_DIR) -> ReleaseManifest:
    path = manifest_path(version, releases_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"Release {version} is unknown: {path} does not exist.") from None
    except OSError as exc:
        raise ReleaseError(f"Release manifest {path} cannot be read ({exc.strerror or exc}).") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ReleaseError(f"Release manifest {path} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(
            f"Release manifest {path} is not valid JSON (line {exc.lineno}: {exc.msg})."
        ) from None
    manifest = ReleaseManifest.from_dict(data, source=f"Release manifest {path}")
    if manifest.version != version:
        raise ReleaseError(
            f"Release manifest {path} records version {manifest.version!r}; a manifest is named after "
            "its version."
        )
    return manifest


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
    out = []
    for p in sorted(releases_dir.glob("*.json")):
        try:
            check_version(p.stem)
        except VersionError:
            raise ReleaseError(
                f"{p} is not a release manifest: its name is not a semantic version (releases/<VERSION>.json)."
            ) from None
        out.append(load_release(p.stem, releases_dir))
    return out
