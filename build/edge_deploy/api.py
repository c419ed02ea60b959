"""The Python API the product promises (``JetsonDeployment`` and five module-level functions).

Thin wrappers over the model pipeline, the backends and the fleet rollout, so a notebook gets the same
checked, atomic results as the CLI. TensorRT engines are built here only where TensorRT imports;
otherwise the bundle carries everything the robot needs to build its engine at first start.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_deploy.errors import CalibrationError, OutputError, PipelineOptionError
from edge_deploy.model import ConvertOptions, ConvertResult, convert, onnx_compat
from edge_deploy.model.bench import bench_bundle
from edge_deploy.model.export import DEFAULT_OPSET
from edge_deploy.model.loading import SourceModel, load_model, shape_range_overrides, source_from_module
from edge_runtime.bundle import BatchProfile, ModelBundle
from edge_runtime.errors import BackendUnavailable, EdgeError
from edge_runtime.jetson import GIB, JetsonModule, jetson_module

if TYPE_CHECKING:
    from edge_deploy.fleet import RolloutResult

log = logging.getLogger(__name__)


@dataclass
class TensorRTConversion:
    """What ``convert_tensorrt`` produced: always a bundle; an engine only where TensorRT runs locally."""

    bundle: ModelBundle
    convert: ConvertResult
    engine_path: Path | None = None
    note: str = ""
    workspace_bytes: int = GIB
    details: dict[str, Any] = field(default_factory=dict)


def _shapes(sample_inputs: Mapping[str, Any] | Sequence[Any] | None) -> dict[str, tuple[int, ...]] | None:
    """Per-sample shapes from example tensors (batch axis dropped); a sequence maps to image, robot_state."""
    if sample_inputs is None:
        return None
    if not isinstance(sample_inputs, Mapping):
        items = list(sample_inputs) if isinstance(sample_inputs, (list, tuple)) else [sample_inputs]
        names = ["image", "robot_state"][: len(items)] or ["input"]
        sample_inputs = dict(zip(names, items, strict=False))
    return {name: tuple(int(d) for d in t.shape[1:]) for name, t in sample_inputs.items()}


def _source(model: Any, sample_inputs: Mapping[str, Any] | Sequence[Any] | None = None) -> SourceModel | Path:
    shapes = _shapes(sample_inputs)
    if isinstance(model, (str, Path)):
        if shapes is None:
            return Path(model)
        return load_model(model, [f"{n}:B{''.join('x' + str(d) for d in s)}" for n, s in shapes.items()])
    return source_from_module(model, shapes)


def _calibration(data: Any) -> Path | dict[str, np.ndarray] | None:
    if data is None or isinstance(data, (str, Path)):
        return Path(data) if data is not None else None
    if isinstance(data, Mapping):
        return {
            k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in data.items()
        }
    raise CalibrationError("Calibration data must be an .npz path or a mapping of input names to arrays.")


def export_to_onnx(
    model: Any,
    sample_input: Mapping[str, Any] | Sequence[Any] | None,
    output_path: str | Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """PyTorch → sanitized, validated fp32 ONNX at ``output_path`` (inputs image/robot_state, output action,
    dynamic batch axis, constant folding). ``model`` is an ``nn.Module`` or a model file."""
    out = Path(output_path)
    with tempfile.TemporaryDirectory(prefix=".edge-export-", dir=_existing_parent(out)) as tmp:
        result = convert(_source(model, sample_input), Path(tmp) / "bundle", ConvertOptions(opset=opset))
        if result.bundle.manifest.model_data:  # weights in external data: re-saved beside the new name
            onnx_compat.save(onnx_compat.load(result.bundle.model_path), out, external=True)
        else:
            result.bundle.model_path.replace(out)
    return out


def convert_to_tensorrt(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    precision: str = "fp16",
    calibration_data: Any = None,
    max_batch_size: int = 1,
    workspace_bytes: int = GIB,
    bundle_dir: str | Path | None = None,
    inputs: Sequence[str] = (),
    shape_ranges: Mapping[str, Sequence[Sequence[int]]] | None = None,
) -> TensorRTConversion:
    """ONNX → model bundle (next to the engine path, ``<stem>.bundle``) and, where TensorRT imports, the
    engine at ``engine_path`` (FP16/INT8; INT8 with the entropy calibrator and its cache file).

    ``inputs``: ``NAME:SHAPE[:DTYPE]`` specs, as ``convert --input`` takes them (e.g. ``obs:Bx64:float32``,
    ``obs:Bx3x96..224x96..224`` for ranged axes). ``shape_ranges``: ``{name: (min_shape, opt_shape,
    max_shape)}``, full shapes as TensorRT's ``set_shape`` takes them, for dynamic non-batch axes (the batch
    axis follows ``max_batch_size``)."""
    onnx_file = Path(onnx_path)
    engine = Path(engine_path) if engine_path is not None else onnx_file.with_suffix(f".{precision}.engine")
    bundle_out = Path(bundle_dir) if bundle_dir is not None else engine.with_suffix(".bundle")
    opts = ConvertOptions(
        precision=precision,
        calibration=_calibration(calibration_data),
        batch=BatchProfile(1, 1, max(1, max_batch_size)),
        inputs=(*inputs, *shape_range_overrides(shape_ranges or {})),
        force=True,
    )
    result = convert(onnx_file, bundle_out, opts)
    conversion = TensorRTConversion(result.bundle, result, workspace_bytes=workspace_bytes)
    try:
        from edge_runtime.backends import BuildOptions, get_backend
        from edge_runtime.backends.base import shape_ranges as shape_ranges_of

        backend = get_backend("tensorrt")
    except BackendUnavailable as exc:
        conversion.note = f"TensorRT is not importable here ({str(exc).rstrip('.')}); the engine is built on the device at first start."
        log.warning(conversion.note)
        return conversion
    # Not exercised here: TensorRT is not installable on our machines.
    options = BuildOptions(
        precision=precision,
        batch=result.bundle.manifest.batch,
        workspace_bytes=workspace_bytes,
        shape_ranges=shape_ranges_of(result.bundle.inputs, result.bundle.manifest.batch),
    )
    plan = backend.build(result.bundle, options)
    tmp = engine.with_name(f".{engine.name}.partial")
    tmp.write_bytes(plan)
    tmp.replace(engine)
    conversion.engine_path = engine
    conversion.note = f"TensorRT {backend.version()} engine written to {engine}."
    return conversion


def quantize_model(
    model: Any,
    calibration_data: Any = None,
    method: str = "int8",
    output_dir: str | Path | None = None,
    sample_input: Any = None,
) -> ConvertResult:
    """INT8 (``int8``/``int8-entropy``, ``int8-minmax``, ``int8-percentile``) or ``fp16`` bundle of ``model``,
    with its accuracy delta against fp32 in ``result.validation``."""
    precision, _, calib_method = method.lower().partition("-")
    if precision not in ("int8", "fp16"):
        raise PipelineOptionError(f"Unknown quantization method {method!r}; use int8, int8-minmax or fp16.")
    if output_dir is None:
        if not isinstance(model, (str, Path)):
            raise OutputError("quantize_model needs output_dir when the model is an in-memory module.")
        output_dir = Path(model).with_suffix(f".{precision}.bundle")
    opts = ConvertOptions(
        precision=precision,
        calibration=_calibration(calibration_data),
        calibration_method=calib_method or "entropy",
        force=True,
    )
    return convert(_source(model, sample_input), output_dir, opts)


def profile_performance(
    model: str | Path, device: str = "cpu", num_iterations: int = 100, batch: int = 1, warmup: int = 10
) -> dict[str, Any]:
    """Latency (mean/p50/p90/p99), throughput and peak memory of a bundle (or a model file, converted to an
    fp32 bundle first). ``device``: ``cpu`` (ONNX Runtime here); on a Jetson use ``edge-runtime profile``
    for TensorRT, tegrastats power and thermal readings."""
    if device not in ("cpu", "onnxruntime"):
        raise PipelineOptionError(
            f"profile_performance runs on the CPU (ONNX Runtime) on the host; for {device!r} run "
            "`edge-runtime profile` on the robot."
        )
    path = Path(model)
    if path.is_dir():
        return bench_bundle(path, runs=num_iterations, warmup=warmup, batch=batch).to_dict()
    with tempfile.TemporaryDirectory(prefix="edge-profile-") as tmp:
        bundle = convert(
            path, Path(tmp) / "bundle", ConvertOptions(batch=BatchProfile(1, 1, max(8, batch)))
        ).bundle
        return bench_bundle(bundle.path, runs=num_iterations, warmup=warmup, batch=batch).to_dict()


def deploy_to_device(package: str, target_ip: str, config: Mapping[str, Any] | None = None) -> RolloutResult:
    """Roll release ``package`` (a version from ``edge-deploy release``) out to the robot at ``target_ip``.

    ``config`` may hold ``jetson_model``, ``user``, ``port``, ``ssh_key``, ``known_hosts`` (any inventory
    field of the robot) and any field of ``edge_deploy.fleet.RolloutOptions`` (``include_ros2``,
    ``auto_start``, ``health_timeout_s`` …)."""
    from edge_deploy.fleet import RolloutOptions, deploy_release
    from edge_deploy.fleet.inventory import Fleet, Robot
    from edge_deploy.fleet.options import options_from_keywords

    cfg = dict(config or {})
    robot_keys = {f.name for f in fields(Robot)} - {"name", "host"}  # every inventory field
    robot_kw: dict[str, Any] = {
        k: (Path(v) if k in ("ssh_key", "known_hosts") else v) for k, v in cfg.items() if k in robot_keys
    }
    robot = Robot(name=str(cfg.pop("name", target_ip)), host=target_ip, **robot_kw)
    for k in robot_keys:
        cfg.pop(k, None)
    options = options_from_keywords(RolloutOptions, version=package, **cfg)
    return deploy_release(Fleet(name=f"robot-{target_ip}", robots=(robot,)), options)


class JetsonDeployment:
    """One policy headed for one Jetson model (and optionally one robot): export, convert, benchmark, deploy.

    ``model_path`` may also map names to model files (``{"detector": "det.onnx", "policy": "policy.pt"}``):
    a deployment of several models, converted together by ``convert_models`` into a model repository (one
    bundle per name, the runtime's /opt/edge/models layout) and deployed as a release of several models."""

    def __init__(
        self,
        model_path: str | Path | Mapping[str, str | Path],
        jetson_ip: str | None = None,
        jetson_model: str = "orin_nano",
        workdir: str | Path | None = None,
    ) -> None:
        # several models: name → file (names as the runtime serves them); else the one model
        self.models: dict[str, Path] = {}
        if isinstance(model_path, Mapping):
            from edge_deploy.images.models import check_model_name

            if not model_path:
                raise EdgeError("JetsonDeployment needs a model path, or a mapping of names to model paths.")
            self.models = {check_model_name(n): Path(p) for n, p in model_path.items()}
            model_path = next(iter(self.models.values()))
        self.model_path = Path(model_path)
        self.jetson_ip = jetson_ip
        self.module: JetsonModule = jetson_module(jetson_model)  # unknown names raise with the choices
        self.workdir = Path(workdir) if workdir is not None else self.model_path.parent
        self.onnx_path: Path | None = None
        self.bundle: ModelBundle | None = None
        self.last_conversion: TensorRTConversion | None = None
        self.conversions: dict[str, TensorRTConversion] = {}  # several models: each one's, by name

    @property
    def workspace_bytes(self) -> int:
        """TensorRT workspace for this module (1 GiB; 2 GiB on modules with ≥ 32 GB)."""
        return self.module.default_workspace_bytes

    def export_onnx(
        self,
        sample_inputs: Mapping[str, Any] | Sequence[Any] | None = None,
        output_path: str | Path = "model.onnx",
        opset: int = DEFAULT_OPSET,
    ) -> Path:
        self.onnx_path = export_to_onnx(self.model_path, sample_inputs, output_path, opset)
        return self.onnx_path

    def convert_tensorrt(
        self,
        onnx_path: str | Path | None = None,
        precision: str = "fp16",
        max_batch_size: int = 1,
        calibration_data: Any = None,
        bundle_dir: str | Path | None = None,
        inputs: Sequence[str] = (),
        shape_ranges: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> TensorRTConversion:
        """Build the model bundle (and a local engine where TensorRT imports); see ``convert_to_tensorrt``
        (``inputs``: ``NAME:SHAPE[:DTYPE]`` specs; ``shape_ranges``: ``{name: (min, opt, max)}`` shapes)."""
        source = Path(onnx_path) if onnx_path is not None else (self.onnx_path or self.model_path)
        if source.suffix.lower() != ".onnx":
            source = self.export_onnx(output_path=self.workdir / f"{self.model_path.stem}.onnx")
        out = (
            Path(bundle_dir)
            if bundle_dir is not None
            else self.workdir / f"{self.model_path.stem}.{precision}.bundle"
        )
        engine = out.with_suffix(f".{self.module.key}.engine")
        conversion = convert_to_tensorrt(
            source,
            engine,
            precision,
            calibration_data,
            max_batch_size,
            self.workspace_bytes,
            bundle_dir=out,
            inputs=inputs,
            shape_ranges=shape_ranges,
        )
        self.bundle, self.last_conversion = conversion.bundle, conversion
        return conversion

    def convert_models(
        self,
        precision: str | Mapping[str, str] = "fp16",
        max_batch_size: int = 1,
        calibration_data: Mapping[str, Any] | None = None,
        repository: str | Path | None = None,
    ) -> dict[str, TensorRTConversion]:
        """Convert every model of a deployment of several models into ``repository`` (default
        ``<workdir>/models``): ``<repository>/<name>/`` one bundle each, the runtime's model repository.
        ``precision`` is one for all or one per name; ``calibration_data`` maps names to each model's
        calibration (an .npz path or a mapping of input names to arrays)."""
        if not self.models:
            raise EdgeError(
                "convert_models is for several models: create JetsonDeployment({name: path, ...})."
            )
        per = precision if isinstance(precision, Mapping) else dict.fromkeys(self.models, precision)
        unknown = sorted(set(per) - set(self.models)) + sorted(set(calibration_data or {}) - set(self.models))
        if unknown:
            raise EdgeError(
                f"Model {unknown[0]!r} is not one of this deployment's: {', '.join(self.models)}."
            )
        root = Path(repository) if repository is not None else self.workdir / "models"
        _existing_parent(root).joinpath(root.name).mkdir(exist_ok=True)
        for name, path in self.models.items():
            source: Path = path
            if path.suffix.lower() != ".onnx":  # exported beside the repository, never into it
                source = export_to_onnx(path, None, self.workdir / f"{name}.onnx")
            self.conversions[name] = convert_to_tensorrt(
                source,
                self.workdir / f"{name}.{self.module.key}.engine",
                per.get(name, "fp16"),
                (calibration_data or {}).get(name),
                max_batch_size,
                self.workspace_bytes,
                bundle_dir=root / name,
            )
        return dict(self.conversions)

    def benchmark(self, num_runs: int = 100, batch: int = 1) -> float:
        """Mean latency in ms on ONNX Runtime (CPU) of the converted bundle (fp32 bundle made if none yet)."""
        if self.bundle is None:
            self.convert_tensorrt(precision="fp32", max_batch_size=max(1, batch))
        assert self.bundle is not None
        return bench_bundle(self.bundle.path, runs=num_runs, batch=batch).latency.mean_ms

    def deploy(
        self, include_ros2: bool = True, auto_start: bool = True, release: str | None = None, **config: Any
    ) -> Any:
        """Deploy this model to the robot at ``jetson_ip`` over SSH, through the fleet's state machine (upload,
        engine pre-build, switch, health gate, automatic rollback, history).

        Without ``release``: no registry is needed. The runtime image is built for the robot from the model
        ``convert_tensorrt`` converted, recorded as a local development release (``0.0.0-dev.<bundle hash>``,
        pinned by digest) and sent over the SSH connection, only the layers the robot lacks
        (``edge_deploy.fleet.direct``). With ``release``: that published release is rolled out from its
        registry (see ``deploy_to_device``).

        ``config``: inventory fields of the robot (``user``, ``port``, ``ssh_key``, ``known_hosts``, ...; a
        robot listed in the fleet.yaml that EDGE_FLEET names takes its entry's values first) and
        ``RolloutOptions`` fields (``health_timeout_s``, ...)."""
        if self.jetson_ip is None:
            raise EdgeError("deploy needs the robot's address: create JetsonDeployment(..., jetson_ip='…').")
        config.setdefault("jetson_model", self.module.key)
        if release is None and self.models:
            raise EdgeError(
                "A deployment of several models is deployed as a release of them: release them (the "
                "release's models) and pass that version as release."
            )
        if release is None:
            return self._deploy_direct(include_ros2, auto_start, config)
        return deploy_to_device(
            release, self.jetson_ip, {"include_ros2": include_ros2, "auto_start": auto_start, **config}
        )

    def _deploy_direct(self, include_ros2: bool, auto_start: bool, config: dict[str, Any]) -> Any:
        """``deploy()`` without a release: build for the robot, record, send over SSH (no registry)."""
        from edge_deploy.fleet.direct import deploy_direct, inventory_entry, target_robot
        from edge_deploy.fleet.inventory import Robot

        assert self.jetson_ip is not None
        robot_keys = {f.name for f in fields(Robot)} - {"host"}
        given = {k: config.pop(k) for k in list(config) if k in robot_keys}
        entry = inventory_entry(self.jetson_ip, given.get("port"), given.get("user"))
        robot = target_robot(self.jetson_ip, **{**entry, **given})
        if self.bundle is not None:  # the model convert_tensorrt converted, at its precision
            model, precision = self.bundle.path, self.bundle.manifest.precision
        else:
            model, precision = self.onnx_path or self.model_path, str(config.pop("precision", "fp16"))
        work = config.pop("work", None)
        return deploy_direct(
            Path(model),
            robot,
            precision=precision,
            work=Path(work) if work is not None else None,
            include_ros2=include_ros2,
            auto_start=auto_start,
            **config,
        )


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"Output directory {parent} does not exist.")
    return parent
