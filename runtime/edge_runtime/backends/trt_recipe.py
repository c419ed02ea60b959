"""How TensorRT builds a bundle at a precision, per TensorRT version: which ONNX file, which network typing,
which builder flags, whether an INT8 calibrator runs. Pure (no TensorRT import), so every branch is tested.

Bundles record their precision in ``bundle.json`` (edge_deploy.model.convert / quantize): ``model.onnx``
is the graph at the bundle's precision and ``quantization.fp32_model`` names the FP32 graph beside it;
``quantization.format`` says what ``model.onnx`` carries: ``QDQ`` (INT8 scales in Q/DQ nodes),
``fp16 ONNX ...`` (FP16 weights and compute), or, for an FP16 bundle converted with ``--fp16-flag-only``,
an FP32 graph that relies on the FP16 builder flag. An INT8 bundle without Q/DQ relies on TensorRT's
entropy calibrator (implicit quantization: calibration data and/or cache in the bundle).

- TensorRT 10.12 and later: networks are strongly typed wherever the graph carries the precision (TensorRT
  11 only has strongly typed networks; it removed BuilderFlag.FP16/INT8 and the INT8 calibrators).
- Earlier (10.3 on JetPack 6, 8.5/8.6 on JetPack 5): weakly typed, precision from builder flags; FP16 and
  implicit INT8 are built from the FP32 graph so TensorRT picks each layer's precision itself.
- 10.12 up to 11: what only flags can build (an FP32 graph at FP16, implicit INT8) still builds weakly typed,
  with a warning that TensorRT 11 will refuse it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import EngineBuildError

log = logging.getLogger(__name__)

STRONGLY_TYPED_FROM = Version("10.12")
NO_WEAK_TYPING_FROM = Version("11")

# What model.onnx's graph carries, from bundle.json's quantization record.
GRAPH_FP32, GRAPH_FP16, GRAPH_QDQ = "fp32", "fp16", "int8-qdq"


@dataclass(frozen=True)
class BuildRecipe:
    """One engine build: the ONNX file, network typing, builder flags (weak typing only), calibration."""

    source: Path
    strongly_typed: bool
    flags: tuple[str, ...] = ()  # BuilderFlag names, set only on weakly typed networks
    calibrate: bool = False  # implicit INT8: IInt8EntropyCalibrator2 over the bundle's calibration files
    precision_from: str = "graph"  # "graph" or "flags": where the engine's precision comes from

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = f", flags {'+'.join(self.flags)}" if self.flags else ""
        calib = ", entropy calibrator" if self.calibrate else ""
        return f"{self.source.name}, {typing}{flags}{calib}"


def graph_precision(bundle: ModelBundle) -> str:
    """What model.onnx carries: GRAPH_QDQ, GRAPH_FP16 or GRAPH_FP32 (see the module docstring)."""
    fmt = str((bundle.manifest.quantization or {}).get("format", "")).strip()
    if fmt.upper() == "QDQ":
        return GRAPH_QDQ
    if fmt.lower().startswith("fp16 onnx"):
        return GRAPH_FP16
    return GRAPH_FP32


def fp32_graph(bundle: ModelBundle) -> Path | None:
    """The bundle's FP32 ONNX: model.onnx when it is FP32, else ``quantization.fp32_model`` if present."""
    if graph_precision(bundle) == GRAPH_FP32:
        return bundle.model_path
    name = (bundle.manifest.quantization or {}).get("fp32_model")
    path = bundle.path / str(name) if name else None
    return path if path is not None and path.is_file() else None


def plan_build(bundle: ModelBundle, precision: str, version: Version | str) -> BuildRecipe:
    """The recipe for ``precision`` with this TensorRT ``version``; EngineBuildError (one sentence naming the
    version and what to do) for what that version cannot build, before any TensorRT call."""
    v = Version(str(version))
    strong = v >= STRONGLY_TYPED_FROM
    weak_allowed = v < NO_WEAK_TYPING_FROM
    graph = graph_precision(bundle)
    fp32 = fp32_graph(bundle)

    if precision == "fp32":
        if fp32 is None:
            raise EngineBuildError(
                f"An FP32 engine needs the bundle's FP32 ONNX, and this {graph} bundle has none "
                "(quantization.fp32_model): build it at the bundle's precision instead."
            )
        return BuildRecipe(fp32, strongly_typed=strong)

    if precision == "fp16":
        if graph == GRAPH_FP16 and strong:
            return BuildRecipe(bundle.model_path, strongly_typed=True)
        if not weak_allowed:
            raise EngineBuildError(
                f"TensorRT {v} builds precision from the ONNX graph (strongly typed networks; the FP16 builder "
                f"flag is gone) and this bundle has no FP16 graph: convert it again with --precision fp16, "
                "which writes an FP16 ONNX."
            )
        source = fp32 or bundle.model_path
        if strong:
            log.warning(
                "TensorRT %s: this bundle has no FP16 graph, so it is built weakly typed with the FP16 flag "
                "(deprecated; TensorRT 11 refuses it: convert the bundle again with an FP16 ONNX)",
                v,
            )
        return BuildRecipe(source, strongly_typed=False, flags=("FP16",), precision_from="flags")

    if precision == "int8":
        if graph == GRAPH_QDQ:
            if strong:
                return BuildRecipe(bundle.model_path, strongly_typed=True)
            # Explicit quantization on a weakly typed network: INT8 enables the Q/DQ layers, FP16 lets
            # TensorRT run the layers between them in half precision.
            return BuildRecipe(
                bundle.model_path, strongly_typed=False, flags=("FP16", "INT8"), precision_from="flags"
            )
        if not weak_allowed:
            raise EngineBuildError(
                f"TensorRT {v} has no implicit INT8 calibration (removed in TensorRT 11) and this INT8 bundle has "
                "no Q/DQ nodes: convert it again with edge-deploy convert --precision int8, which writes a Q/DQ "
                "model TensorRT builds as is."
            )
        if strong:
            log.warning(
                "TensorRT %s: implicit INT8 calibration is deprecated (TensorRT 11 refuses it); "
                "convert the bundle again to get a Q/DQ model",
                v,
            )
        source = fp32 or bundle.model_path
        return BuildRecipe(
            source, strongly_typed=False, flags=("FP16", "INT8"), calibrate=True, precision_from="flags"
        )

    raise EngineBuildError(f"Unknown precision {precision!r}; choose one of: fp32, fp16, int8.")
