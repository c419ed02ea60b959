"""Clean the exported graph the way Polygraphy's ``surgeon sanitize`` does, then run ONNX's full check.

onnx-graphsurgeon folds constants (through ONNX Runtime), removes dead nodes and sorts topologically;
``onnx.checker`` with ``full_check`` also runs strict shape inference, so a broken graph stops here and
not on the robot. Both run on the saved file, so a model whose weights live in external data (past the
2 GB protobuf limit) is checked the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_deploy.errors import ModelLoadError
from edge_runtime.bundle import TensorSpec


def sanitize_model(
    model: Any, inputs: list[TensorSpec], output_names: list[str]
) -> tuple[Any, dict[str, Any]]:
    """Return the sanitized ``onnx.ModelProto`` and a small report (node counts before/after)."""
    import onnx_graphsurgeon as gs

    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    _name_io(graph, inputs, output_names)
    try:
        graph.fold_constants(error_ok=True).cleanup().toposort()
    except Exception:  # folding is an optimization; a graph it cannot fold is still checked below
        graph.cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = min(cleaned.ir_version, model.ir_version) if model.ir_version else cleaned.ir_version
    cleaned.opset_import.clear()
    cleaned.opset_import.extend(model.opset_import)
    return cleaned, {"nodes_before": before, "nodes_after": len(cleaned.graph.node)}


def _name_io(graph: Any, inputs: list[TensorSpec], output_names: list[str]) -> None:
    """Pin the batch axis name and static dims on the graph inputs/outputs (exporters name it differently)."""
    by_name = {s.name: s for s in inputs}
    for t in graph.inputs:
        spec = by_name.get(t.name)
        if spec is not None:
            t.shape = list(spec.shape)
    dynamic = any(s.shape and isinstance(s.shape[0], str) for s in inputs)
    for t in graph.outputs:
        if t.shape and dynamic and not isinstance(t.shape[0], int):
            t.shape = ["batch", *list(t.shape)[1:]]


def save_model(model: Any, path: Path, external: bool | None = None) -> bool:
    """Save, then run strict shape inference and ``onnx.checker``'s full check on the file.

    Returns whether the weights went to an external data file (large models, or ``external=True``).
    """
    import onnx

    from edge_deploy.model import onnx_compat

    external = onnx_compat.save(model, path, external)
    try:
        onnx.shape_inference.infer_shapes_path(
            os.fspath(path), os.fspath(path), check_type=True, strict_mode=True
        )
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as exc:
        raise ModelLoadError(
            f"The ONNX graph fails onnx.checker's full check: {str(exc).strip().splitlines()[0][:200]}."
        ) from None
    return external
