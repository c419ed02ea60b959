"""The model bundle: ``model.onnx`` + ``bundle.json`` (+ calibration files), the unit both sides exchange.

The host side writes it (``edge_deploy.model``); the robot loads it. Loading checks the schema and the
sha256 of every listed file, so a tampered or missing file is refused with its name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import BundleError

# 2 adds per-axis shape ranges (``TensorSpec.ranges``); a bundle without ranges is still written as 1 so
# runtimes that read only version 1 keep loading it. Both versions load here.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "bundle.json"
PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")

Dim = int | str  # a fixed size, or the name of a dynamic axis ("batch")
POINTS = ("min", "opt", "max")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class AxisRange:
    """The sizes a dynamic non-batch axis takes (TensorRT's optimization profile: MIN ≤ OPT ≤ MAX)."""

    axis: int
    min: int
    opt: int
    max: int

    def at(self, point: str) -> int:
        return {"min": self.min, "opt": self.opt, "max": self.max}[point]

    def __str__(self) -> str:
        return f"{self.min}..{self.max}" if self.opt == self.max else f"{self.min}..{self.opt}..{self.max}"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. A ``str`` dim is dynamic: the batch axis, or (with an entry in ``ranges``)
    a non-batch axis whose sizes the bundle's optimization profile bounds."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    ranges: tuple[AxisRange, ...] = ()

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def batch_axes(self) -> list[int]:
        """Dynamic axes that follow the batch profile (every dynamic axis without a range)."""
        ranged = {r.axis for r in self.ranges}
        return [i for i in self.dynamic_axes if i not in ranged]

    def range_of(self, axis: int) -> AxisRange | None:
        return next((r for r in self.ranges if r.axis == axis), None)

    def concrete_shape(self, batch: int, point: str = "opt") -> tuple[int, ...]:
        """The shape with the batch axis set to ``batch`` and each ranged axis to its ``point`` (min/opt/max)."""
        out = []
        for i, d in enumerate(self.shape):
            r = self.range_of(i) if isinstance(d, str) else None
            out.append(r.at(point) if r else batch if isinstance(d, str) else d)
        return tuple(out)

    def profile_shapes(self, batch: BatchProfile) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """MIN, OPT and MAX shapes of this input for an optimization profile."""
        lo, opt, hi = (
            self.concrete_shape(b, p) for b, p in zip((batch.min, batch.opt, batch.max), POINTS, strict=True)
        )
        return lo, opt, hi

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()},
        }
        if self.ranges:
            d["ranges"] = {str(r.axis): {"min": r.min, "opt": r.opt, "max": r.max} for r in self.ranges}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        shape = tuple(x if isinstance(x, str) else int(x) for x in d["shape"])
        if d["dtype"] not in DTYPES:
            raise BundleError(f"Tensor {d['name']!r} has unsupported dtype {d['dtype']!r}.")
        ranges = []
        for axis, r in (d.get("ranges") or {}).items():
            rng = AxisRange(int(axis), int(r["min"]), int(r["opt"]), int(r["max"]))
            if not 0 < rng.axis < len(shape) or not isinstance(shape[rng.axis], str):
                raise BundleError(
                    f"Tensor {d['name']!r} has a size range for axis {axis}, which is not a dynamic non-batch axis."
                )
            if not 1 <= rng.min <= rng.opt <= rng.max:
                raise BundleError(
                    f"Tensor {d['name']!r} axis {axis} has range {rng.min},{rng.opt},{rng.max}; it needs "
                    "1 ≤ MIN ≤ OPT ≤ MAX."
                )
            ranges.append(rng)
        return cls(
            name=str(d["name"]),
            dtype=str(d["dtype"]),
            shape=shape,
            ranges=tuple(sorted(ranges, key=lambda r: r.axis)),
        )


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimization profile for the batch axis (MIN ≤ OPT ≤ MAX)."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise BundleError(
                f"Batch profile {self.min},{self.opt},{self.max} is invalid; it needs 1 ≤ MIN ≤ OPT ≤ MAX."
            )

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """Parse ``MIN,OPT,MAX`` (e.g. ``1,1,8``)."""
        parts = text.split(",")
        try:
            lo, opt, hi = (int(p) for p in parts)
        except ValueError:
            raise BundleError(
                f"Batch profile {text!r} is not of the form MIN,OPT,MAX (e.g. 1,1,8)."
            ) from None
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


@dataclass
class BundleManifest:
    """What ``bundle.json`` holds. ``files`` maps every file of the bundle to its sha256."""

    precision: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch: BatchProfile
    files: dict[str, str]
    model_file: str = "model.onnx"
    name: str = "policy"
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    calibration: dict[str, str] | None = None  # {"data": "calibration.npz", "cache": "calibration.cache"}
    # The model's external data file (weights past the 2 GB protobuf limit), resolved beside model_file.
    model_data: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def sha256(self) -> str:
        """Content identity of the bundle: the hash of its file hashes (timestamps and reports excluded)."""
        canonical = json.dumps(sorted(self.files.items()), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["batch"] = asdict(self.batch)
        d["bundle_sha256"] = self.sha256
        # Version 1 where nothing needs 2, so runtimes that read only 1 still load the bundle.
        d["schema_version"] = SCHEMA_VERSION if self.has_ranges else 1
        return d

    @property
    def has_ranges(self) -> bool:
        return any(t.ranges for t in self.inputs)

    def shape_ranges(self) -> dict[str, dict[str, list[int]]]:
        """Per ranged input, its MIN/OPT/MAX shapes under the batch profile (what the engine's profile holds)."""
        return {
            t.name: dict(zip(POINTS, (list(s) for s in t.profile_shapes(self.batch)), strict=True))
            for t in self.inputs
            if t.ranges
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BundleManifest:
        version = d.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise BundleError(
                f"bundle.json has schema version {version!r}; this edge-runtime reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}."
            )
        try:
            manifest = cls(
                precision=str(d["precision"]),
                opset=int(d["opset"]),
                inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
                outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
                batch=BatchProfile(**{k: int(v) for k, v in d["batch"].items()}),
                files={str(k): str(v) for k, v in d["files"].items()},
                model_file=str(d.get("model_file", "model.onnx")),
                name=str(d.get("name", "policy")),
                created=str(d.get("created", "")),
                source=dict(d.get("source") or {}),
                versions={str(k): str(v) for k, v in (d.get("versions") or {}).items()},
                validation=dict(d.get("validation") or {}),
                quantization=d.get("quantization"),
                calibration=d.get("calibration"),
                model_data=str(d["model_data"]) if d.get("model_data") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle.json is malformed: missing or invalid field {exc}.") from None
        if manifest.precision not in PRECISIONS:
            raise BundleError(f"bundle.json names unknown precision {manifest.precision!r}.")
        if manifest.model_file not in manifest.files:
            raise BundleError(
                f"bundle.json does not list the hash of its model file {manifest.model_file!r}."
            )
        if manifest.model_data is not None and manifest.model_data not in manifest.files:
            raise BundleError(
                f"bundle.json does not list the hash of the model's external data {manifest.model_data!r}."
            )
        return manifest


@dataclass(frozen=True)
class ModelBundle:
    """A bundle directory whose files were checked against ``bundle.json``."""

    path: Path
    manifest: BundleManifest

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def file(self, name: str) -> Path:
        return self.path / name

    def calibration_path(self, kind: str) -> Path | None:
        """Path of the calibration ``data`` (npz) or TensorRT ``cache`` file, if the bundle has one."""
        name = (self.manifest.calibration or {}).get(kind)
        return self.path / name if name else None

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> ModelBundle:
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"Model bundle {root} does not exist or is not a directory.")
        manifest_path = root / MANIFEST
        try:
            data = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise BundleError(f"{root} is not a model bundle: {MANIFEST} is missing.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path} cannot be read as JSON ({exc}).") from None
        if not isinstance(data, dict):
            raise BundleError(f"{manifest_path} does not hold a JSON object.")
        manifest = BundleManifest.from_dict(data)
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every listed file against its recorded sha256; name the first that differs."""
        for name, expected in sorted(self.manifest.files.items()):
            file = self.path / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"bundle.json lists a file outside the bundle: {name!r}.")
            if not file.is_file():
                raise BundleError(f"Bundle file {name} is missing from {self.path}.")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"Bundle file {name} does not match bundle.json (sha256 {actual[:12]}…, "
                    f"expected {expected[:12]}…): the bundle was modified or corrupted."
                )
