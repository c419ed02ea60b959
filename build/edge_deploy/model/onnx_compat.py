"""Bring an ONNX file another tool wrote to the form the pipeline works on, and save large models safely.

The rule: a model ONNX Runtime runs as it is is accepted. Older files are normalized (initializers moved
out of the graph inputs of IR < 4 graphs, the default-domain opset raised to ``TARGET_OPSET`` with
``onnx.version_converter``); files ONNX Runtime itself rejects end in one sentence. Models past ONNX's
2 GB protobuf limit keep their weights in an external data file beside the model (``<model>.data``),
which ONNX Runtime and TensorRT resolve relative to the model's path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edge_deploy.errors import ModelLoadError

# int8 quantization writes per-channel QuantizeLinear/DequantizeLinear (axis attribute): opset 13 or newer.
TARGET_OPSET = 13
# Protobuf refuses to serialize a message of 2 GiB or more; stay clear of it (graph + attributes).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DATA_SUFFIX = ".data"


def default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_ort_accepts(path: Path) -> None:
    """Open ``path`` with ONNX Runtime (CPU); the one authority on whether a file is a runnable model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime rejects {path.name}: {_first_line(exc)}.") from None


def uses_external_data(model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data as uses

    return any(uses(t) for t in _tensors(model))


def tensor_bytes(model: Any) -> int:
    """Bytes of weights held in the proto (external tensors count by their recorded length)."""
    total = 0
    for t in _tensors(model):
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += sum(int(e.value) for e in t.external_data if e.key == "length")
            total += 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data)
            )
    return total


def _tensors(model: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def normalize(model: Any) -> tuple[Any, list[str]]:
    """Old IR / old opset → a graph the pipeline handles; return the model and notes on what changed."""
    import onnx
    from onnx import version_converter

    notes: list[str] = []
    inits = {i.name for i in model.graph.initializer}
    as_inputs = [vi for vi in model.graph.input if vi.name in inits]
    if as_inputs:
        keep = [vi for vi in model.graph.input if vi.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        notes.append(f"moved {len(as_inputs)} initializer(s) out of the graph inputs (IR {model.ir_version})")
    if model.ir_version < 4:  # from IR 4 on, an initializer need not be a graph input
        model.ir_version = 4
    opset = default_opset(model)
    if opset and opset < TARGET_OPSET:
        big = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
        if big:
            raise ModelLoadError(
                f"The model's opset {opset} is older than {TARGET_OPSET} and it is too large to upgrade in "
                f"memory; re-export it at opset {TARGET_OPSET} or newer."
            )
        try:
            upgraded = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:
            raise ModelLoadError(
                f"The model's opset {opset} cannot be upgraded to {TARGET_OPSET}: {_op_hint(exc, model)}."
            ) from None
        upgraded.ir_version = max(
            int(model.ir_version), onnx.helper.find_min_ir_version_for(list(upgraded.opset_import), True)
        )
        model = upgraded
        notes.append(f"opset {opset} → {TARGET_OPSET} (onnx.version_converter)")
    return model, notes


def _op_hint(exc: BaseException, model: Any) -> str:
    text = _first_line(exc)
    ops = {n.op_type for n in model.graph.node}
    named = [op for op in sorted(ops) if re.search(rf"\b{re.escape(op)}\b", text)]
    return f"no adapter for op {named[0]} ({text})" if named else text


def save(model: Any, path: Path, external: bool | None = None) -> bool:
    """Save ``model``; weights go to ``<name>.data`` beside it when asked or past the protobuf limit.

    Returns whether external data was written. Any older data file of that name is replaced, not appended.
    """
    import onnx

    if external is None:
        external = uses_external_data(model) or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data = path.with_name(path.name + DATA_SUFFIX)
    data.unlink(missing_ok=True)
    if external:
        onnx.save_model(
            model,
            os.fspath(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
            convert_attribute=False,
        )
    else:
        onnx.save_model(model, os.fspath(path))
    return external


def data_file(path: Path) -> Path | None:
    """The external data file saved beside ``path`` by ``save``, if there is one."""
    data = path.with_name(path.name + DATA_SUFFIX)
    return data if data.is_file() else None


def load(path: Path) -> Any:
    import onnx

    return onnx.load(os.fspath(path), load_external_data=True)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:240].rstrip(".")
