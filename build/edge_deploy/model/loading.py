"""Load what the user hands ``convert``: TorchScript, a full-module checkpoint, or an existing ONNX file.

Also decides the input specs (names, dtypes, shapes with a dynamic batch axis): read from the model where
it records them (ONNX, forward signature), the product's defaults for the known policy inputs, and
``--input NAME:SHAPE`` overrides.
"""

from __future__ import annotations

import inspect
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edge_deploy.errors import InputError, ModelLoadError, PipelineOptionError
from edge_runtime.bundle import DTYPES, AxisRange, Dim, TensorSpec, sha256_file

BATCH_AXIS = "batch"
# The product's policy interface (ARCHITECTURE.md): used where a TorchScript file names but cannot size inputs.
DEFAULT_INPUTS: dict[str, tuple[int, ...]] = {"image": (3, 224, 224), "robot_state": (48,)}
DEFAULT_OUTPUTS = ("action",)

_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 9: "bool"}


@dataclass
class SourceModel:
    """A loaded model plus what the pipeline needs to know about it."""

    path: Path
    kind: str  # "torchscript" | "module" | "onnx"
    sha256: str
    inputs: list[TensorSpec]
    output_names: list[str]
    module: Any = None  # torch.nn.Module / ScriptModule; None for ONNX
    onnx_model: Any = None  # onnx.ModelProto for kind == "onnx"
    notes: list[str] = field(default_factory=list)
    static_batch: int | None = None  # the ONNX model fixes the batch axis to this size
    opset: int | None = None  # the source ONNX file's default-domain opset, before any upgrade
    ir_version: int | None = None
    external_data: bool = False  # the source ONNX keeps its weights in external data

    @property
    def is_torch(self) -> bool:
        return self.kind in ("torchscript", "module")


class InputOverride(NamedTuple):
    """``--input NAME:SHAPE[:DTYPE]``: per-sample dims (batch axis dropped), an optional dtype, and the size
    ranges of the axes written ``MIN..MAX`` or ``MIN..OPT..MAX`` (their dims hold a placeholder name)."""

    name: str
    dims: tuple[Dim, ...]
    dtype: str | None = None
    ranges: tuple[AxisRange, ...] = ()


_RANGE = re.compile(r"^(\d+)\.\.(?:(\d+)\.\.)?(\d+)$")


def parse_input_override(text: str) -> InputOverride:
    """Parse ``NAME:SHAPE[:DTYPE]`` where SHAPE is ``Bx3x224x224`` or ``B,3,224,224``; the first axis is the batch.

    The batch axis may be written as ``B``/``batch``/``-1`` or any number; it stays dynamic unless the ONNX
    model fixes it. Any other axis may be a range, ``MIN..MAX`` or ``MIN..OPT..MAX`` (OPT defaults to MAX):
    ``obs:Bx3x96..224x96..160..224``. DTYPE is one of the bundle dtypes (float32, float16, int64, int32, uint8,
    bool).
    """
    name, sep, rest = text.partition(":")
    shape, _, dtype = rest.partition(":")
    if not sep or not name or not shape:
        raise PipelineOptionError(
            f"Input override {text!r} is not of the form NAME:SHAPE[:DTYPE] (e.g. image:Bx3x224x224:float32)."
        )
    if dtype and dtype not in DTYPES:
        raise PipelineOptionError(
            f"Input override {text!r} names dtype {dtype!r}; choose one of: {', '.join(DTYPES)}."
        )
    parts = [p.strip() for p in re.split(r"[x,]", shape) if p.strip()]
    if len(parts) < 1:
        raise PipelineOptionError(f"Input override {text!r} has an empty shape.")
    dims: list[Dim] = []
    ranges: list[AxisRange] = []
    for i, p in enumerate(parts):
        if i == 0 and p.lower() in ("b", "batch", "-1", "n"):
            continue
        m = _RANGE.match(p)
        if m and i > 0:
            lo, hi = int(m.group(1)), int(m.group(3))
            opt = int(m.group(2)) if m.group(2) else hi
            if not 1 <= lo <= opt <= hi:
                raise PipelineOptionError(
                    f"Input override {text!r} has a range {p!r} that is not MIN..MAX or MIN..OPT..MAX with "
                    "1 ≤ MIN ≤ OPT ≤ MAX."
                )
            ranges.append(AxisRange(i, lo, opt, hi))
            dims.append(f"{name}_{i}")
            continue
        if not p.isdigit() or int(p) < 1:
            raise PipelineOptionError(
                f"Input override {text!r} has a dimension {p!r} that is not a positive number"
                + (" (the batch axis takes its range from `batch`)." if m else " or a MIN..MAX range.")
            )
        if i == 0:
            continue  # a concrete batch size: the axis stays dynamic
        dims.append(int(p))
    return InputOverride(name, tuple(dims), dtype or None, tuple(ranges))


def shape_range_overrides(ranges: Mapping[str, Sequence[Sequence[int]]]) -> list[str]:
    """``{name: (min_shape, opt_shape, max_shape)}`` (full shapes, batch axis first) → ``--input`` specs.

    The Python API's form of a range: an axis whose three sizes differ becomes ``MIN..OPT..MAX``; the batch
    axis is left to the batch profile.
    """
    specs = []
    for name, shapes in ranges.items():
        if len(shapes) != 3 or len({len(s) for s in shapes}) != 1:
            raise PipelineOptionError(
                f"Shape range for {name!r} must be three shapes of one rank (min, opt, max), got {shapes!r}."
            )
        lo, opt, hi = ([int(d) for d in s] for s in shapes)
        dims = ["B"] + [
            str(a) if a == b == c else f"{a}..{b}..{c}"
            for a, b, c in zip(lo[1:], opt[1:], hi[1:], strict=True)
        ]
        specs.append(f"{name}:{'x'.join(dims)}")
    return specs


def load_model(path: str | Path, overrides: Sequence[str] = ()) -> SourceModel:
    """Load and identify a model file; raise ModelLoadError with one sentence when it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"Model file {p} does not exist.")
    if p.is_dir():
        raise ModelLoadError(f"Model path {p} is a directory, not a model file.")
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"Model file {p} cannot be read ({exc.strerror or exc}).") from None
    if not head:
        raise ModelLoadError(f"Model file {p} is empty.")
    parsed = {o.name: o for o in (parse_input_override(t) for t in overrides)}
    digest = sha256_file(p)
    if p.suffix.lower() == ".onnx":
        return _load_onnx(p, digest, parsed)
    if zipfile.is_zipfile(p) or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle
        return _load_torch(p, digest, parsed)
    return _load_onnx(p, digest, parsed)


def _load_onnx(p: Path, digest: str, overrides: dict[str, InputOverride]) -> SourceModel:
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from edge_deploy.model import onnx_compat

    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        if p.suffix.lower() != ".onnx":
            raise ModelLoadError(
                f"{p} is not a model: expected TorchScript, a torch.save'd nn.Module, or an .onnx file."
            ) from None
        raise ModelLoadError(f"{p} is not a valid ONNX model: {_short(exc)}.") from None
    onnx_compat.check_ort_accepts(p)
    opset, ir = onnx_compat.default_opset(model), int(model.ir_version)
    external = onnx_compat.uses_external_data(model)
    if external:
        try:
            load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise ModelLoadError(f"The external data of {p.name} cannot be read: {_short(exc)}.") from None
    model, notes = onnx_compat.normalize(model)
    specs = []
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise ModelLoadError(
                f"ONNX input {vi.name!r} has element type {onnx.TensorProto.DataType.Name(tt.elem_type)}, "
                f"which model bundles do not carry ({', '.join(DTYPES)})."
            )
        dims: list[int | str] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(BATCH_AXIS)
            else:
                dims.append(d.dim_param or f"{vi.name}_{i}")
        specs.append(TensorSpec(vi.name, dtype, tuple(dims)))
    names = [s.name for s in specs]
    _check_override_names(overrides, names)
    out = []
    for s in specs:
        if s.name in overrides:
            ov = overrides[s.name]
            current = tuple(d for d in s.shape[1:])
            fixed = next(
                (
                    (i + 1, c)
                    for i, (c, f) in enumerate(zip(current, ov.dims, strict=False))
                    if isinstance(c, int) and isinstance(f, str)
                ),
                None,
            )
            if len(ov.dims) == len(current) and fixed:
                raise InputError(
                    f"Input override {s.name} gives axis {fixed[0]} a range, but the ONNX model fixes that axis "
                    f"to {fixed[1]}; a range needs a dynamic axis."
                )
            if len(ov.dims) != len(current) or any(
                isinstance(c, int) and c != f for c, f in zip(current, ov.dims, strict=True)
            ):
                raise InputError(
                    f"Input override {s.name}:{_fmt(ov.dims)} does not match the ONNX model's shape {_fmt(current)}."
                )
            if ov.dtype and ov.dtype != s.dtype:
                raise InputError(
                    f"Input override {s.name} names dtype {ov.dtype}, but the ONNX model takes {s.dtype}."
                )
            # A ranged axis keeps the model's name for it (shared names stay shared); a size fixes it.
            dims = [c if isinstance(f, str) else f for c, f in zip(current, ov.dims, strict=True)]
            s = TensorSpec(s.name, s.dtype, (s.shape[0], *dims), ov.ranges)
        out.append(s)
    out = share_ranges(out)
    static = next((int(s.shape[0]) for s in out if s.shape and isinstance(s.shape[0], int)), None)
    if static is not None:
        notes.append(f"the model fixes the batch axis to {static}: batch profile {static},{static},{static}")
    return SourceModel(
        p,
        "onnx",
        digest,
        out,
        [o.name for o in model.graph.output],
        onnx_model=model,
        notes=notes,
        static_batch=static,
        opset=opset,
        ir_version=ir,
        external_data=external,
    )


def share_ranges(specs: list[TensorSpec]) -> list[TensorSpec]:
    """Give every dynamic non-batch axis its range: its own, or the one of an axis of the same name on another
    input (one range per name). An axis with none is refused with the sentence that asks for one."""
    by_symbol: dict[str, tuple[str, AxisRange]] = {}
    for s in specs:
        for r in s.ranges:
            symbol = str(s.shape[r.axis])
            seen = by_symbol.setdefault(symbol, (s.name, r))
            if (seen[1].min, seen[1].opt, seen[1].max) != (r.min, r.opt, r.max):
                raise InputError(
                    f"Inputs {seen[0]!r} and {s.name!r} share dynamic axis {symbol!r} but are given different "
                    f"ranges ({seen[1]} and {r}); give it one range.",
                    option="inputs",
                )
    out = []
    for s in specs:
        ranges = list(s.ranges)
        for axis, symbol in s.dynamic_axes.items():
            if axis == 0 or s.range_of(axis) is not None:
                continue
            if symbol not in by_symbol:
                example = ",".join(
                    "B" if i == 0 else ("MIN..MAX" if isinstance(d, str) else str(d))
                    for i, d in enumerate(s.shape)
                )
                raise InputError(
                    f"Input {s.name!r} has a dynamic axis {axis} ({symbol!r}) with no size range; give `inputs` one, "
                    f"e.g. {s.name}:{example} (MIN..OPT..MAX also works), or fix its size with a number.",
                    option="inputs",
                )
            r = by_symbol[symbol][1]
            ranges.append(AxisRange(axis, r.min, r.opt, r.max))
        out.append(TensorSpec(s.name, s.dtype, s.shape, tuple(sorted(ranges, key=lambda r: r.axis))))
    return out


def _load_torch(p: Path, digest: str, overrides: dict[str, InputOverride]) -> SourceModel:
    import torch

    kind = "torchscript"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
        arg_names = [a.name for a in module.forward.schema.arguments][1:]  # drop self
    except Exception:
        kind = "module"
    if kind == "module":
        try:
            module = torch.load(str(p), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelLoadError(
                f"{p} is not a model this pipeline reads (TorchScript, a torch.save'd module, or .onnx): {_short(exc)}."
            ) from None
        if isinstance(module, dict):
            raise ModelLoadError(
                f"{p} holds a state_dict (weights only); save the full module with torch.save(model) "
                "or a TorchScript file (torch.jit.script/trace + torch.jit.save)."
            )
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"{p} holds a {type(module).__name__}, not a torch.nn.Module.")
        params = inspect.signature(module.forward).parameters.values()
        arg_names = [a.name for a in params if a.kind in (a.POSITIONAL_ONLY, a.POSITIONAL_OR_KEYWORD)]
    module.eval()
    structure = {
        a: [k.split(".", 1)[1] for k in overrides if k.startswith(a + ".")]
        for a in arg_names
        if any(k.startswith(a + ".") for k in overrides)
    }
    flat_names = [
        n for a in arg_names for n in ([f"{a}.{m}" for m in structure[a]] if a in structure else [a])
    ]
    _check_override_names(overrides, flat_names)
    if structure and kind == "torchscript":
        raise InputError(
            f"{p.name} is TorchScript; dict or tuple inputs ({', '.join(structure)}) need a torch.save'd module.",
            option="inputs",
        )
    if structure:
        module = flat_module(module, arg_names, structure)
    specs = []
    for name in flat_names:
        ov = overrides.get(name)
        shape = ov.dims if ov else DEFAULT_INPUTS.get(name)
        if shape is None:
            raise InputError(
                f"The model's input {name!r} has no known shape; give it with an `inputs` override "
                f"{name}:Bx<dims>.",
                option="inputs",
            )
        specs.append(
            TensorSpec(
                name, (ov.dtype if ov else None) or "float32", (BATCH_AXIS, *shape), ov.ranges if ov else ()
            )
        )
    return SourceModel(p, kind, digest, specs, list(DEFAULT_OUTPUTS), module=module)


def flat_outputs(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Tensors of a (nested) dict/tuple/list output in order, each with a name from its dict keys."""
    if isinstance(out, dict):
        return [item for k, v in out.items() for item in flat_outputs(v, f"{prefix}{k}.")]
    if isinstance(out, (tuple, list)):
        return [item for i, v in enumerate(out) for item in flat_outputs(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), out)]


def _flat_module_class() -> type:
    import torch

    class _FlatModule(torch.nn.Module):
        """Flat tensors in, flat tensors out, around a module whose forward takes or returns dicts/tuples.

        Input ``obs.image`` is member ``image`` of a dict argument ``obs`` (``pair.0``: item 0 of a tuple);
        output names come from the dict keys the model returns (``output_keys``), so the exporters,
        validation and the bundle all see plain named tensors.
        """

        def __init__(self, inner: Any, args: list[str], structure: dict[str, list[str]]) -> None:
            super().__init__()
            self.inner = inner
            self.arg_names = list(args)
            self.structure = dict(structure)
            self.output_keys: list[str] | None = None

        def forward(self, *flat: Any) -> Any:
            it = iter(flat)
            args: list[Any] = []
            for a in self.arg_names:
                members = self.structure.get(a)
                if not members:
                    args.append(next(it))
                    continue
                values = {m: next(it) for m in members}
                if all(m.isdigit() for m in members):
                    args.append(tuple(values[m] for m in sorted(members, key=int)))
                else:
                    args.append(values)
            raw = self.inner(*args)
            named = flat_outputs(raw)
            if self.output_keys is None and isinstance(raw, dict) and len(named) > 1:
                self.output_keys = [n.replace(".", "_") for n, _ in named]
            tensors = tuple(t for _, t in named)
            return tensors[0] if len(tensors) == 1 else tensors

    return _FlatModule


def flat_module(inner: Any, args: list[str], structure: dict[str, list[str]]) -> Any:
    """Wrap ``inner`` so it takes and returns flat tensors (see ``_FlatModule``)."""
    return _flat_module_class()(inner, args, structure).eval()


def _check_override_names(overrides: dict[str, InputOverride], names: list[str]) -> None:
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(
            f"Input override {unknown[0]!r} does not name a model input; the model takes {', '.join(names)}."
        )


def _fmt(shape: tuple[Any, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200].rstrip(".")


def source_from_module(
    module: Any,
    inputs: dict[str, tuple[int, ...]] | None = None,
    output_names: Sequence[str] = DEFAULT_OUTPUTS,
) -> SourceModel:
    """Wrap an in-memory ``nn.Module`` (Python API); ``inputs`` maps names to per-sample shapes."""
    import hashlib
    import io

    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"Expected a torch.nn.Module, got {type(module).__name__}.")
    shapes = inputs or DEFAULT_INPUTS
    specs = [TensorSpec(n, "float32", (BATCH_AXIS, *shape)) for n, shape in shapes.items()]
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return SourceModel(
        Path(f"<{type(module).__name__}>"),
        "module",
        hashlib.sha256(buf.getvalue()).hexdigest(),
        specs,
        list(output_names),
        module=module.eval(),
    )
