"""PyTorch → ONNX with ``torch.onnx.export``: named inputs/outputs, dynamic batch axis, constant folding.

torch ≥ 2.9 defaults to the dynamo exporter, which cannot trace a ScriptModule and writes opset 18 whatever
is asked; the TorchScript-based exporter (``dynamo=False``) handles both TorchScript files and plain modules
and honours ``opset_version``, so it is used first; plain modules fall back to dynamo if it fails.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from pathlib import Path
from typing import Any

from edge_deploy.errors import ExportError, InputError, PipelineOptionError
from edge_deploy.model.loading import BATCH_AXIS, SourceModel
from edge_runtime.bundle import TensorSpec

MIN_OPSET = 15
DEFAULT_OPSET = 17
MAX_OPSET = 20


def check_opset(opset: int) -> int:
    if opset < MIN_OPSET:
        raise PipelineOptionError(
            f"Opset {opset} is too old; TensorRT on JetPack 5/6 needs opset {MIN_OPSET} or newer (default {DEFAULT_OPSET})."
        )
    if opset > MAX_OPSET:
        raise PipelineOptionError(
            f"Opset {opset} is newer than this exporter supports ({MIN_OPSET}..{MAX_OPSET})."
        )
    return opset


def example_inputs(specs: list[TensorSpec], batch: int, seed: int = 0) -> dict[str, Any]:
    """Deterministic float32 inputs of the given batch size, as numpy arrays."""
    import numpy as np

    from edge_deploy.model.validate import random_array

    rng = np.random.default_rng(seed)
    return {s.name: random_array(s.dtype, s.concrete_shape(batch), rng) for s in specs}


def _torch_outputs(module: Any, specs: list[TensorSpec], feeds: dict[str, Any]) -> tuple[Any, list[Any]]:
    import torch

    from edge_deploy.model.loading import flat_outputs

    args = [torch.from_numpy(feeds[s.name]) for s in specs]
    with torch.inference_mode():
        out = module(*args)
    return out, [t.detach().cpu().numpy() for _, t in flat_outputs(out)]


def run_torch(module: Any, specs: list[TensorSpec], feeds: dict[str, Any]) -> list[Any]:
    """Run a torch model on numpy feeds; return its outputs as numpy arrays, nested dicts/tuples flattened."""
    return _torch_outputs(module, specs, feeds)[1]


def probe_torch(source: SourceModel, batch: int = 2) -> int:
    """Run the model once on inputs of the planned shapes; wrong names/shapes fail here with one sentence."""
    from edge_deploy.model.loading import flat_outputs

    feeds = example_inputs(source.inputs, batch)
    try:
        raw, outs = _torch_outputs(source.module, source.inputs, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{s.name}:{'x'.join(map(str, s.concrete_shape(batch)))}" for s in source.inputs)
        raise InputError(
            f"The model does not accept inputs {shapes} ({_first_line(exc)}); give the right shapes as `inputs` "
            "overrides NAME:SHAPE.",
            option="inputs",
        ) from None
    if isinstance(raw, dict) and len(outs) > 1:  # several outputs, named by the model's own keys
        source.output_names = [n.replace(".", "_") for n, _ in flat_outputs(raw)]
    keys = getattr(source.module, "output_keys", None)
    if keys and len(keys) == len(outs):
        source.output_names = list(keys)
    return len(outs)


def output_names(count: int, preferred: list[str]) -> list[str]:
    if count == len(preferred):
        return list(preferred)
    return [preferred[0] if i == 0 and preferred else f"output_{i}" for i in range(count)]


def _takes_varargs(module: Any) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL for p in params)


def export_onnx(source: SourceModel, output: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export ``source`` to ``output``; return what the exporter did (exporter used, output names)."""
    import torch

    check_opset(opset)
    n_out = probe_torch(source)
    outputs = output_names(n_out, source.output_names)
    source.output_names = outputs
    feeds = example_inputs(source.inputs, 2)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in source.inputs)
    names = [s.name for s in source.inputs]
    dynamic_axes: dict[str, dict[int, str]] = {n: {0: BATCH_AXIS} for n in [*names, *outputs]}
    for s in source.inputs:  # ranged non-batch axes stay dynamic in the graph, under their own names
        dynamic_axes[s.name].update({r.axis: str(s.shape[r.axis]) for r in s.ranges})
    errors: list[str] = []
    for dynamo in (False, True):
        if dynamo and source.kind == "torchscript":
            break
        kwargs: dict[str, Any] = dict(
            input_names=names,
            output_names=outputs,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=dynamo,
        )
        if dynamo:
            dim = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
            symbols = {
                # Dim names must be identifiers (an input named obs.image gives axis obs.image_2)
                str(s.shape[r.axis]): torch.export.Dim(
                    re.sub(r"\W", "_", str(s.shape[r.axis])), min=r.min, max=r.max
                )
                for s in source.inputs
                for r in s.ranges
            }
            shapes = tuple(
                {0: dim, **{r.axis: symbols[str(s.shape[r.axis])] for r in s.ranges}} for s in source.inputs
            )
            # One entry per parameter of forward: a forward(*flat) (dict/tuple inputs) has one, the tuple.
            kwargs["dynamic_shapes"] = (shapes,) if _takes_varargs(source.module) else shapes
        else:
            kwargs["dynamic_axes"] = dynamic_axes
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(source.module, args, str(output), **kwargs)
            return {
                "exporter": "dynamo" if dynamo else "torchscript",
                "opset_requested": opset,
                "outputs": outputs,
            }
        except Exception as exc:
            errors.append(_first_line(exc))
    tried = "the TorchScript exporter" if len(errors) == 1 else "the TorchScript and torch.export exporters"
    raise ExportError(
        f"{source.path.name} is not traceable for ONNX export ({tried} failed: {errors[-1]}); "
        "rewrite the data-dependent Python in its forward with tensor ops, or export it to ONNX yourself."
    )


def _first_line(exc: BaseException) -> str:
    """The line that says what went wrong (TorchScript puts it last, after the interpreter's stack)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error:" in ln]
    text = errs[-1] if errs else (lines[0] if lines else type(exc).__name__)
    return text[:240].rstrip(".")
