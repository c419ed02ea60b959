"""Reduced precision: fp16 ONNX, int8 static QDQ, and the TensorRT calibration cache derived from it.

fp16 uses onnxruntime.transformers' float16 converter with float32 inputs/outputs kept, so callers feed
the same arrays at every precision. int8 uses ONNX Runtime static quantization into QDQ form with
symmetric int8 activations and per-channel symmetric weights: the form TensorRT consumes as explicit
quantization, and one ONNX Runtime runs on CPU.

TensorRT calibration cache (``calibration.cache``): the text format TensorRT's ``IInt8EntropyCalibrator2``
reads and writes: a header line ``TRT-<version>-EntropyCalibration2`` (version as TensorRT encodes it,
e.g. 8601 for 8.6.1, 100300 for 10.3.0), then one ``<tensor name>: <hex>`` line per tensor, where ``<hex>``
is the IEEE-754 float32 bit pattern of the tensor's scale (amax / 127) in 8 lowercase hex digits. The
scales are the activation scales of the QDQ model, keyed by the tensor names of the fp32 model, so a
device build from ``model.fp32.onnx`` with the entropy calibrator reads them instead of recalibrating.
TensorRT ignores a cache whose header names another version; the device calibrator can then regenerate
it from ``calibration.npz``.
"""

from __future__ import annotations

import contextlib
import io
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_deploy.errors import CalibrationError, PipelineOptionError, QuantizationError
from edge_runtime.bundle import TensorSpec
from edge_runtime.jetpack import default_release

CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
# Q/DQ on the inputs of the weighted ops only (TensorRT's placement recommendation): elementwise ops, masks
# and softmax stay float, so an attention mask's -inf does not flatten a whole tensor's int8 scale.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# The TensorRT of the default JetPack row (the one the robots' base image ships), from the versions table.
DEFAULT_TRT_VERSION = default_release().tensorrt


def load_calibration(
    path: str | Path, specs: list[TensorSpec], limit: int | None = None
) -> dict[str, np.ndarray]:
    """Read an npz of named input arrays and check it against the model's inputs (names, dims, dtype)."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"Calibration file {p} does not exist.")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise CalibrationError(
            f"Calibration file {p} is not a readable .npz of arrays ({type(exc).__name__})."
        ) from None
    return check_calibration(arrays, specs, f"Calibration file {p.name}", limit)


def check_calibration(
    arrays: dict[str, np.ndarray],
    specs: list[TensorSpec],
    label: str = "The calibration data",
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Check named calibration arrays against the inputs; return them contiguous, in the input dtypes."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(
            f"{label} has no array {missing[0]!r}; it needs arrays named {', '.join(names)}."
        )
    counts = set()
    for s in specs:
        a = np.asarray(arrays[s.name])
        want = tuple(s.shape[1:])
        ranges = {r.axis: r for r in s.ranges}  # a ranged axis takes any size in its range
        if a.ndim != len(s.shape) or any(
            (not ranges[i].min <= n <= ranges[i].max) if i in ranges else n != d
            for i, (n, d) in enumerate(zip(a.shape[1:], want, strict=True), start=1)
        ):
            want = tuple(str(ranges[i]) if i in ranges else d for i, d in enumerate(want, start=1))
            raise CalibrationError(
                f"Calibration array {s.name!r} has shape {list(a.shape)}, expected [N, {', '.join(map(str, want))}]."
            )
        if np.dtype(s.dtype).kind != a.dtype.kind and not (
            np.dtype(s.dtype).kind in "iu" and a.dtype.kind in "iu"
        ):
            raise CalibrationError(f"Calibration array {s.name!r} has dtype {a.dtype}, expected {s.dtype}.")
        counts.add(a.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"The calibration arrays ({label}) must hold the same, non-zero number of samples."
        )
    return {s.name: np.ascontiguousarray(arrays[s.name][:limit], dtype=s.dtype) for s in specs}


def to_fp16(model: Any) -> Any:
    """fp16 weights and compute with float32 graph inputs/outputs; ``model`` is a ModelProto or a path
    (a path lets the converter run shape inference on models past the 2 GB protobuf limit)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # LayerNormalization stays float32: it is where fp16 loses most accuracy, and ONNX Runtime 1.32's full
    # graph optimizations crash on an fp16 LayerNormalization between Cast nodes (a transformer encoder).
    try:
        return convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=False,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, "LayerNormalization"],
        )
    except Exception as exc:
        raise QuantizationError(f"fp16 conversion failed: {_first_line(exc)}.") from None


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration arrays, in batches."""

    def __init__(self, calibration: dict[str, np.ndarray], batch: int) -> None:
        self._it = self._batches(calibration, batch)

    @staticmethod
    def _batches(calibration: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
        n = len(next(iter(calibration.values())))
        for i in range(0, n, batch):
            yield {k: v[i : i + batch] for k, v in calibration.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by quantize_static's single pass
        raise NotImplementedError


def to_int8(
    fp32_path: Path,
    output: Path,
    calibration: dict[str, np.ndarray],
    method: str = "entropy",
    batch: int = 8,
    external_data: bool = False,
) -> dict[str, Any]:
    """Static int8 QDQ quantization of ``fp32_path`` into ``output``; return the settings used.

    ``external_data``: the weights go to ``<output>.data`` (models past the 2 GB protobuf limit).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise PipelineOptionError(
            f"Unknown calibration method {method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}."
        )
    # quantize_static prints progress on stdout, which `convert --json` reserves for its summary.
    with (
        tempfile.TemporaryDirectory(prefix="edge-quant-", dir=output.parent) as tmp,
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(
                str(fp32_path),
                str(pre),
                skip_symbolic_shape=False,
                save_as_external_data=external_data,
                all_tensors_to_one_file=True,
                external_data_location="pre.onnx.data",
            )
        except Exception as exc:
            raise QuantizationError(
                f"INT8 pre-processing (shape inference) failed: {_first_line(exc)}."
            ) from None
        try:
            quantize_static(
                str(pre),
                str(output),
                _Reader(calibration, batch),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                op_types_to_quantize=list(QUANTIZED_OPS),
                use_external_data_format=external_data,
            )
        except Exception as exc:
            raise QuantizationError(f"INT8 calibration/quantization failed: {_first_line(exc)}.") from None
    return {
        "format": "QDQ",
        "method": method,
        "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel",
        "samples": len(next(iter(calibration.values()))),
    }


def activation_scales(qdq_model: Any) -> dict[str, float]:
    """Per-tensor activation scales of a QDQ model: the scale of every QuantizeLinear on a non-weight tensor."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    scales: dict[str, float] = {}
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = inits.get(node.input[1])
        if scale is None:
            continue
        value = numpy_helper.to_array(scale)
        if value.size == 1:
            scales[node.input[0]] = float(value.reshape(()))
    return scales


def trt_version_tag(version: str) -> str:
    """TensorRT's integer version in cache headers: 8.6.1 → 8601, 10.3.0 → 100300."""
    try:
        parts = [int(p) for p in version.split(".")[:3]] + [0, 0]
    except ValueError:
        raise PipelineOptionError(
            f"TensorRT version {version!r} is not of the form MAJOR.MINOR.PATCH."
        ) from None
    major, minor, patch = parts[:3]
    # NV_TENSORRT_VERSION: MAJOR*1000+MINOR*100+PATCH before 10, MAJOR*10000+MINOR*100+PATCH from 10 on.
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def format_trt_cache(scales: dict[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> str:
    lines = [f"TRT-{trt_version_tag(trt_version)}-EntropyCalibration2"]
    for name, scale in scales.items():
        bits = struct.unpack(">I", struct.pack(">f", float(scale)))[0]
        lines.append(f"{name}: {bits:08x}")
    return "\n".join(lines) + "\n"


def parse_trt_cache(text: str) -> tuple[str, dict[str, float]]:
    """Inverse of ``format_trt_cache``: (header, {tensor: scale})."""
    header, *rest = text.strip().splitlines()
    scales = {}
    for line in rest:
        name, _, hexbits = line.rpartition(": ")
        scales[name] = struct.unpack(">f", struct.pack(">I", int(hexbits, 16)))[0]
    return header, scales


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200].rstrip(".")
