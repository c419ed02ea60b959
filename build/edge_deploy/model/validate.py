"""Compare two runs of the same model (PyTorch vs ONNX Runtime, or fp32 vs fp16/int8 ONNX) output by output.

Errors are the largest absolute difference and the largest relative difference (|a-b| / max(|ref|, floor)),
so a tiny reference value cannot blow the relative error up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_deploy.errors import ValidationError
from edge_runtime.bundle import TensorSpec

# Largest max-abs error accepted per precision, on outputs of order 1 (the policy's actions are tanh'ed).
TOLERANCES: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1.5e-1}
REL_FLOOR = 1e-2

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    """Per-output errors of ``candidate`` against ``reference`` and whether they stay within ``tolerance``."""

    reference: str
    candidate: str
    tolerance: float
    outputs: list[OutputError]
    batches: list[int]

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "tolerance": self.tolerance,
            "max_abs": self.max_abs,
            "passed": self.passed,
            "batches": self.batches,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def sample_batches(
    specs: list[TensorSpec],
    batch_sizes: list[int],
    calibration: dict[str, np.ndarray] | None,
    max_batch: int,
    seed: int = 1234,
    points: list[str] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Random inputs at each batch size (so the dynamic axis is exercised), then the calibration samples.

    ``points`` (min/opt/max, one per batch size) sets each ranged non-batch axis with it: validation runs the
    model at the profile's MIN, OPT and MAX shapes; without it ranged axes take their OPT size.
    """
    rng = np.random.default_rng(seed)
    for b, point in zip(batch_sizes, points or ["opt"] * len(batch_sizes), strict=True):
        yield {s.name: random_array(s.dtype, s.concrete_shape(b, point), rng) for s in specs}
    if calibration:
        n = len(next(iter(calibration.values())))
        for start in range(0, n, max_batch):
            yield {
                s.name: np.ascontiguousarray(calibration[s.name][start : start + max_batch]) for s in specs
            }


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random data of a declared dtype: normal floats, bools, and small non-negative integers
    (integer inputs are mostly indices or token ids, which must stay inside a table)."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("int64", "int32", "uint8"):
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_inputs(specs: list[TensorSpec], samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``samples`` random samples per input, stacked on the batch axis (calibration from random data)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.shape and isinstance(s.shape[0], int):  # a static batch: whole batches, concatenated
            reps = -(-samples // max(int(s.shape[0]), 1))
            out[s.name] = np.concatenate(
                [random_array(s.dtype, s.concrete_shape(1), rng) for _ in range(reps)]
            )
        else:
            out[s.name] = random_array(s.dtype, s.concrete_shape(samples), rng)
    return out


def compare(
    reference: Runner,
    candidate: Runner,
    output_names: list[str],
    batches: Iterator[dict[str, np.ndarray]],
    tolerance: float,
    labels: tuple[str, str] = ("pytorch", "onnxruntime"),
) -> Comparison:
    """Run both on every batch and accumulate per-output errors."""
    acc = {n: [0.0, 0.0, 0.0, 0] for n in output_names}  # max_abs, max_rel, sum_abs, count
    seen: list[int] = []
    for feeds in batches:
        seen.append(int(next(iter(feeds.values())).shape[0]))
        ref_out = reference(feeds)
        cand_out = candidate(feeds)
        for name, r, c in zip(output_names, ref_out, cand_out, strict=True):
            r64, c64 = np.asarray(r, np.float64), np.asarray(c, np.float64)
            if r64.shape != c64.shape:
                raise ValueError(f"output {name!r} has shape {c64.shape} vs {r64.shape}")
            diff = np.abs(r64 - c64)
            rel = diff / np.maximum(np.abs(r64), REL_FLOOR)
            a = acc[name]
            a[0] = max(a[0], float(diff.max(initial=0.0)))
            a[1] = max(a[1], float(rel.max(initial=0.0)))
            a[2] += float(diff.sum())
            a[3] += int(diff.size)
    outputs = [OutputError(n, a[0], a[1], a[2] / max(a[3], 1), int(a[3])) for n, a in acc.items()]
    return Comparison(labels[0], labels[1], tolerance, outputs, seen)


def ort_runner(model: str | bytes, output_names: list[str]) -> Runner:
    """A CPU ONNX Runtime session as a Runner (full graph optimizations, like the robot's ORT backend);
    ``model`` is a path or a serialized model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200].rstrip(".")
        name = Path(model).name if isinstance(model, str) else "the source model"
        raise ValidationError(f"ONNX Runtime cannot load {name}: {first}.") from None

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(output_names, feeds))

    return run
