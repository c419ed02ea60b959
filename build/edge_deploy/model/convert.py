"""``convert``: model file → validated, optionally quantized model bundle, one timed step at a time."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_deploy.bundle.writer import BundleWriter, check_writable
from edge_deploy.errors import CalibrationError, ExportError, PipelineOptionError, ValidationError
from edge_deploy.model import export as export_mod
from edge_deploy.model import onnx_compat, quantize, sanitize, validate
from edge_deploy.model.loading import SourceModel, load_model
from edge_runtime.bundle import DTYPES, PRECISIONS, BatchProfile, BundleManifest, ModelBundle, TensorSpec

MODEL = "model.onnx"
FP32_MODEL = "model.fp32.onnx"
CALIB_DATA = "calibration.npz"
CALIB_CACHE = "calibration.cache"
VALIDATION_SAMPLES = 32  # calibration samples used for PyTorch-vs-ORT validation (keeps convert fast)


def _created() -> str:
    """The bundle's creation time: SOURCE_DATE_EPOCH where a reproducible build sets it, else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch.isdigit() else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


@dataclass
class ConvertOptions:
    precision: str = "fp32"
    calibration: Path | dict[str, np.ndarray] | None = None  # npz path, or named arrays (Python API)
    calibration_method: str = "entropy"
    opset: int = export_mod.DEFAULT_OPSET
    batch: BatchProfile = field(default_factory=BatchProfile)
    inputs: Sequence[str] = ()  # NAME:SHAPE overrides
    tolerance: float | None = None  # max-abs error accepted; default per precision (validate.TOLERANCES)
    fp16_onnx: bool = True  # fp16: ship an fp16 ONNX as model.onnx (else fp32 ONNX + fp16 engine flag only)
    trt_version: str = quantize.DEFAULT_TRT_VERSION
    # int8: calibration samples kept in the bundle. The QDQ model carries its scales (TensorRT builds it
    # with explicit quantization) and calibration.cache serves the implicit path, so none by default.
    embed_calibration: int = 0
    force: bool = False
    name: str = "policy"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise PipelineOptionError(
                f"Unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}."
            )
        export_mod.check_opset(self.opset)
        if self.precision == "int8" and self.calibration is None:
            raise CalibrationError(
                "INT8 needs calibration data: pass `calibration`, an .npz file with arrays named like the inputs.",
                option="calibration",
            )
        if self.calibration_method not in quantize.CALIBRATION_METHODS:
            raise PipelineOptionError(
                f"Unknown calibration method {self.calibration_method!r}; choose one of: "
                f"{', '.join(quantize.CALIBRATION_METHODS)}."
            )
        if self.tolerance is not None and not self.tolerance > 0:
            raise PipelineOptionError(f"Tolerance {self.tolerance} must be a positive number.")


@dataclass
class Step:
    name: str
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": round(self.seconds, 4), "detail": self.detail}


@dataclass
class ConvertResult:
    bundle: ModelBundle
    steps: list[Step]
    validation: dict[str, Any]
    quantization: dict[str, Any] | None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "bundle": str(self.bundle.path),
            "bundle_sha256": m.sha256,
            "precision": m.precision,
            "opset": m.opset,
            "batch": str(m.batch),
            "seconds": round(self.seconds, 3),
            "steps": [s.to_dict() for s in self.steps],
            "validation": self.validation,
            "quantization": self.quantization,
            "files": sorted(m.files),
        }


StepCallback = Callable[[Step], None]


class _Steps:
    def __init__(self, on_step: StepCallback | None) -> None:
        self.steps: list[Step] = []
        self.on_step = on_step

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        s = Step(name, 0.0)
        t0 = time.perf_counter()
        yield s
        s.seconds = time.perf_counter() - t0
        self.steps.append(s)
        if self.on_step:
            self.on_step(s)


def convert(
    model_path: str | Path | SourceModel,
    output: str | Path,
    options: ConvertOptions | None = None,
    on_step: StepCallback | None = None,
) -> ConvertResult:
    """Run every step; any failure raises an EdgeError and leaves nothing at ``output``."""
    opts = options or ConvertOptions()
    opts.check()
    target = Path(output)
    check_writable(target, opts.force)
    run = _Steps(on_step)

    with run.step("load") as st:
        source = model_path if isinstance(model_path, SourceModel) else load_model(model_path, opts.inputs)
        if source.static_batch is not None:
            n = source.static_batch
            opts = dataclasses.replace(opts, batch=BatchProfile(n, n, n))
        st.detail = f"{source.kind}, inputs " + ", ".join(
            f"{s.name}{_shape(s)}{'' if s.dtype == 'float32' else ':' + s.dtype}" for s in source.inputs
        )
        if source.opset is not None:
            st.detail += f"; IR {source.ir_version}, opset {source.opset}"
        if source.notes:
            st.detail += "; " + "; ".join(source.notes)
    calibration = None
    if opts.calibration is not None:
        with run.step("calibration data") as st:
            if isinstance(opts.calibration, dict):
                calibration = quantize.check_calibration(opts.calibration, source.inputs)
                origin = "arrays"
            else:
                calibration = quantize.load_calibration(opts.calibration, source.inputs)
                origin = Path(opts.calibration).name
            st.detail = f"{len(next(iter(calibration.values())))} samples from {origin}"

    with BundleWriter(target, force=opts.force) as writer:
        keeps_fp32 = opts.precision == "fp32" or (opts.precision == "fp16" and not opts.fp16_onnx)
        fp32_path = writer.path(MODEL if keeps_fp32 else FP32_MODEL)
        raw_path = writer.path("export.onnx")
        export_info: dict[str, Any] = {"exporter": "none (source is ONNX)"}
        if source.is_torch:
            with run.step("export") as st:
                export_info = export_mod.export_onnx(source, raw_path, opts.opset)
                st.detail = f"torch.onnx.export ({export_info['exporter']}), opset {opts.opset}"
        with run.step("sanitize") as st:
            import onnx

            raw = onnx_compat.load(raw_path) if source.is_torch else source.onnx_model
            clean, report = sanitize.sanitize_model(raw, source.inputs, source.output_names)
            lost = sorted({i.name for i in source.inputs} - {i.name for i in clean.graph.input})
            if source.is_torch and lost:
                raise ExportError(
                    f"{source.path.name} is not traceable for ONNX export: its outputs do not depend on input "
                    f"{lost[0]!r} through tensor ops (Python-side computation was recorded as constants); "
                    "rewrite that part of its forward with tensor ops, or export it to ONNX yourself."
                )
            external = sanitize.save_model(clean, fp32_path, True if source.external_data else None)
            raw_path.unlink(missing_ok=True)
            for leftover in raw_path.parent.glob(raw_path.name + "*"):
                leftover.unlink()  # the exporter's external data, if it wrote any
            opset = next((o.version for o in clean.opset_import if o.domain in ("", "ai.onnx")), opts.opset)
            outputs = _output_specs(clean)
            source.output_names = [o.name for o in outputs]
            st.detail = (
                f"{report['nodes_before']} → {report['nodes_after']} nodes, onnx.checker full check passed"
                + (f", weights in {fp32_path.name}{onnx_compat.DATA_SUFFIX}" if external else "")
            )
            del raw, clean

        with run.step("validate") as st:
            fp32_validation = _validate_fp32(source, fp32_path, calibration, opts)
            st.detail = _fmt_cmp(fp32_validation)
        validation: dict[str, Any] = {"fp32": fp32_validation}

        quant_info: dict[str, Any] | None = None
        calib_files: dict[str, str] | None = None
        if opts.precision == "fp16":
            with run.step("fp16") as st:
                if opts.fp16_onnx:
                    half = quantize.to_fp16(str(fp32_path))  # a path: shape inference past 2 GB
                    onnx_compat.save(half, writer.path(MODEL), external or None)
                    del half
                    delta = _delta(fp32_path, writer.path(MODEL), source, calibration, opts, "fp16")
                    validation["fp16_vs_fp32"] = delta
                    quant_info = {"format": "fp16 ONNX (float32 inputs/outputs)", "fp32_model": FP32_MODEL}
                    st.detail = "fp16 ONNX; " + _fmt_cmp(delta)
                else:
                    quant_info = {"format": "fp32 ONNX; the device engine is built with the FP16 flag"}
                    st.detail = "fp32 ONNX kept; precision recorded for the engine build"
        elif opts.precision == "int8":
            assert calibration is not None
            with run.step("int8 calibrate + quantize") as st:
                quant_info = quantize.to_int8(
                    fp32_path,
                    writer.path(MODEL),
                    calibration,
                    opts.calibration_method,
                    batch=min(opts.batch.max, 16),
                    external_data=external,
                )
                qdq = onnx.load(str(writer.path(MODEL)), load_external_data=False)
                scales = quantize.activation_scales(qdq)
                writer.path(CALIB_CACHE).write_text(quantize.format_trt_cache(scales, opts.trt_version))
                calib_files = {"cache": CALIB_CACHE}
                if opts.embed_calibration:
                    subset = {k: v[: opts.embed_calibration] for k, v in calibration.items()}
                    with writer.path(CALIB_DATA).open("wb") as f:
                        np.savez_compressed(f, **subset)  # type: ignore[arg-type]
                    calib_files["data"] = CALIB_DATA
                quant_info.update(
                    {
                        "fp32_model": FP32_MODEL,
                        "trt_cache_tensors": len(scales),
                        "trt_cache_header": f"TRT-{quantize.trt_version_tag(opts.trt_version)}-EntropyCalibration2",
                    }
                )
                st.detail = f"QDQ, {opts.calibration_method}, {quant_info['samples']} samples, {len(scales)} tensor scales"
            with run.step("int8 accuracy") as st:
                delta = _delta(fp32_path, writer.path(MODEL), source, calibration, opts, "int8")
                validation["int8_vs_fp32"] = delta
                st.detail = _fmt_cmp(delta)

        with run.step("write bundle") as st:
            data = onnx_compat.data_file(writer.path(MODEL))
            manifest = BundleManifest(
                model_data=data.name if data else None,
                precision=opts.precision,
                opset=int(opset),
                inputs=source.inputs,
                outputs=outputs,
                batch=opts.batch,
                files={},
                model_file=MODEL,
                name=opts.name,
                created=_created(),
                source={
                    "path": source.path.name,
                    "kind": source.kind,
                    "sha256": source.sha256,
                    **export_info,
                    **({"ir_version": source.ir_version, "opset": source.opset} if source.opset else {}),
                    **({"notes": source.notes} if source.notes else {}),
                },
                versions=_versions(),
                validation=validation,
                quantization=quant_info,
                calibration=calib_files,
            )
            bundle = writer.commit(manifest)
            st.detail = f"{bundle.path} ({len(manifest.files)} file(s), sha256 {bundle.sha256[:12]})"
    return ConvertResult(bundle, run.steps, validation, quant_info)


def _validate_fp32(
    source: SourceModel, fp32_path: Path, calibration: dict[str, np.ndarray] | None, opts: ConvertOptions
) -> dict[str, Any]:
    tol = (
        opts.tolerance
        if opts.tolerance is not None and opts.precision == "fp32"
        else validate.TOLERANCES["fp32"]
    )
    sizes, points = _profile_points(source, opts, ("min", "opt", "max"))
    calib = {k: v[:VALIDATION_SAMPLES] for k, v in calibration.items()} if calibration else None
    candidate = validate.ort_runner(str(fp32_path), source.output_names)
    reference: validate.Runner
    if source.is_torch:

        def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return export_mod.run_torch(source.module, source.inputs, feeds)

        labels = ("pytorch", "onnxruntime fp32")
    else:
        # No PyTorch here: the original file as the user gave it, so normalizing (IR, opset) and sanitizing
        # are checked not to change the outputs.
        reference = validate.ort_runner(str(source.path), source.output_names)
        labels = ("onnxruntime (original ONNX file)", "onnxruntime fp32")
    try:
        cmp = validate.compare(
            reference,
            candidate,
            source.output_names,
            validate.sample_batches(source.inputs, sizes, calib, opts.batch.max, points=points),
            tol,
            labels,
        )
    except Exception as exc:
        at = f"batch sizes {sizes}" + (
            f" and shapes {_ranged_shapes(source, opts)}" if any(s.ranges for s in source.inputs) else ""
        )
        raise ValidationError(
            f"The exported model fails to run at {at}: {str(exc).splitlines()[0][:200]}."
        ) from None
    if not cmp.passed:
        raise ValidationError(
            f"ONNX Runtime's output differs from {'PyTorch' if source.is_torch else 'the original ONNX file'}'s "
            f"by {cmp.max_abs:.3g} (max abs), above the fp32 tolerance {tol:g}."
        )
    result = cmp.to_dict()
    if any(s.ranges for s in source.inputs):  # which MIN/OPT/MAX shapes the runs covered
        result["shapes"] = {
            s.name: dict(
                zip(("min", "opt", "max"), (list(x) for x in s.profile_shapes(opts.batch)), strict=True)
            )
            for s in source.inputs
            if s.ranges
        }
    return result


def _delta(
    fp32_path: Path,
    candidate_path: Path,
    source: SourceModel,
    calibration: dict[str, np.ndarray] | None,
    opts: ConvertOptions,
    precision: str,
) -> dict[str, Any]:
    """Accuracy of the reduced-precision model against fp32 ONNX on the calibration set (random if none)."""
    tol = opts.tolerance if opts.tolerance is not None else validate.TOLERANCES[precision]
    ref = validate.ort_runner(str(fp32_path), source.output_names)
    cand = validate.ort_runner(str(candidate_path), source.output_names)
    sizes, points = ([], []) if calibration else _profile_points(source, opts, ("min", "max"))
    cmp = validate.compare(
        ref,
        cand,
        source.output_names,
        validate.sample_batches(source.inputs, sizes, calibration, opts.batch.max, points=points),
        tol,
        ("onnxruntime fp32", f"onnxruntime {precision}"),
    )
    result = cmp.to_dict()
    result["data"] = "calibration set" if calibration else "random inputs"
    if not cmp.passed:
        raise ValidationError(
            f"The {precision} model differs from fp32 by {cmp.max_abs:.3g} (max abs), above the {precision} "
            f"tolerance {tol:g}; try `calibration_method` minmax, more calibration data, or a larger "
            "`tolerance`.",
            option=("calibration_method", "tolerance"),
        )
    return result


def _profile_points(
    source: SourceModel, opts: ConvertOptions, wanted: tuple[str, ...]
) -> tuple[list[int], list[str]]:
    """Batch sizes and range points to validate at: each profile point once (MIN, OPT, MAX). Without ranged
    axes, points that share a batch size are one run."""
    ranged = any(s.ranges for s in source.inputs)
    pairs: list[tuple[int, str]] = []
    for point in wanted:
        b = {"min": opts.batch.min, "opt": opts.batch.opt, "max": opts.batch.max}[point]
        if ranged or b not in [p[0] for p in pairs]:
            pairs.append((b, point))
    pairs.sort(key=lambda p: (p[0], ("min", "opt", "max").index(p[1])))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _ranged_shapes(source: SourceModel, opts: ConvertOptions) -> str:
    return "; ".join(
        f"{s.name} " + " / ".join("x".join(map(str, shape)) for shape in s.profile_shapes(opts.batch))
        for s in source.inputs
        if s.ranges
    )


def _output_specs(model: Any) -> list[TensorSpec]:
    from onnx import helper

    specs = []
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append("batch" if i == 0 else (d.dim_param or f"dim{i}"))
        dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else "float32"
        specs.append(TensorSpec(vi.name, dtype if dtype in DTYPES else "float32", tuple(dims)))
    return specs


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import edge_deploy

    out = {"edge-deploy": edge_deploy.__version__}
    for pkg in ("torch", "onnx", "onnxruntime", "onnx-graphsurgeon"):
        with suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _shape(spec: TensorSpec) -> str:
    dims = (str(spec.range_of(i) or d) if isinstance(d, str) else str(d) for i, d in enumerate(spec.shape))
    return "[" + ",".join(dims) + "]"


def _fmt_cmp(cmp: dict[str, Any]) -> str:
    outs = ", ".join(
        f"{o['name']}: max abs {o['max_abs']:.2e}, max rel {o['max_rel']:.2e}" for o in cmp["outputs"]
    )
    return f"{cmp['candidate']} vs {cmp['reference']}: {outs} (tolerance {cmp['tolerance']:g}, batches {cmp['batches']})"


__all__ = ["ConvertOptions", "ConvertResult", "Step", "convert"]
