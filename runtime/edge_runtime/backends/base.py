"""The one small protocol every backend implements; the rest of the runtime never asks which it holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_runtime.bundle import BatchProfile, ModelBundle, TensorSpec
from edge_runtime.errors import InputError
from edge_runtime.jetson import GIB


@dataclass(frozen=True)
class BuildOptions:
    """How to turn a bundle into an engine; part of the engine cache key where it changes the engine."""

    precision: str = "fp32"
    batch: BatchProfile = field(default_factory=BatchProfile)
    workspace_bytes: int = GIB
    timing_cache: Path | None = None  # TensorRT: persistent timing cache shared across models
    calibration_cache: Path | None = None  # TensorRT INT8: entropy calibrator cache
    intra_op_threads: int = 0  # ONNX Runtime: 0 = library default
    inter_op_threads: int = 0
    # ONNX Runtime: let idle intra-op threads spin-wait for work. Off: on a robot the cores are shared with
    # drivers and ROS nodes, and spinning threads burn them (and power); measured here it also cut the
    # service's p99 (bench/service_overhead).
    spin_wait: bool = False
    cuda_graph: bool = False  # TensorRT runtime: capture the enqueue in a CUDA graph
    # Per ranged input, its MIN/OPT/MAX shapes (the bundle's non-batch axis ranges): they shape the TensorRT
    # optimization profile, so they are part of the cache key. Empty for bundles without ranges.
    shape_ranges: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = ()
    # Request slots: inferences one loaded engine runs at once (TensorRT: one execution context and CUDA
    # stream each). It does not change the engine's bytes, so it is not part of the cache key.
    slots: int = 1

    @classmethod
    def for_bundle(
        cls,
        bundle: ModelBundle,
        board_model: str | None,
        precision: str | None = None,
        *,
        intra_op_threads: int = 0,
        spin_wait: bool = False,
        cuda_graph: bool = False,
        slots: int = 1,
    ) -> BuildOptions:
        """What ``serve``, ``engine build`` and ``profile`` all build with, so they share cache entries:
        the bundle's precision and batch profile, the Jetson module's workspace (1 GiB off a Jetson)."""
        from edge_runtime.jetson import module_from_device_tree

        module = module_from_device_tree(board_model) if board_model else None
        return cls(
            precision=precision or bundle.manifest.precision,
            batch=bundle.manifest.batch,
            workspace_bytes=module.default_workspace_bytes if module else GIB,
            intra_op_threads=intra_op_threads,
            spin_wait=spin_wait,
            cuda_graph=cuda_graph,
            shape_ranges=shape_ranges(bundle.inputs, bundle.manifest.batch),
            slots=slots,
        )


def shape_ranges(
    inputs: list[TensorSpec], batch: BatchProfile
) -> tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]:
    """``(name, (min, opt, max))`` for each input with a ranged non-batch axis, in input order."""
    return tuple((s.name, s.profile_shapes(batch)) for s in inputs if s.ranges)


@runtime_checkable
class Engine(Protocol):
    """A loaded engine, ready to run."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Builds serialized engines from bundles and loads them back."""

    name: str
    engine_suffix: str

    def version(self) -> str:
        """Library version; part of the cache key so an upgrade misses the cache."""
        ...

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        """Build and serialize an engine; raises EngineBuildError on failure."""
        ...

    def load(self, engine: bytes, bundle: ModelBundle, options: BuildOptions) -> Engine:
        """Deserialize an engine built by ``build``; raises EngineBuildError if it is not loadable."""
        ...


def check_feeds(specs: list[TensorSpec], feeds: Mapping[str, np.ndarray], batch: BatchProfile) -> int:
    """Check names, dtypes and shapes of a request against the model; return its batch size.

    Raises InputError with one sentence naming the first problem.
    """
    expected = {s.name for s in specs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise InputError(f"Unknown input {unknown[0]!r}; the model takes {', '.join(sorted(expected))}.")
    missing = sorted(expected - set(feeds))
    if missing:
        raise InputError(f"Missing input {missing[0]!r}; the model takes {', '.join(sorted(expected))}.")
    batch_size: int | None = None
    symbols: dict[str, tuple[str, int, int]] = {}  # a ranged axis's name → (input, axis, size) first seen
    for spec in specs:
        arr = feeds[spec.name]
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(f"Input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}.")
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"Input {spec.name!r} has shape {list(arr.shape)}, expected {_fmt_shape(spec.shape)}."
            )
        for size, dim in zip(arr.shape, spec.shape, strict=True):
            if isinstance(dim, int) and size != dim:
                raise InputError(
                    f"Input {spec.name!r} has shape {list(arr.shape)}, expected {_fmt_shape(spec.shape)}."
                )
        for axis in spec.dynamic_axes:
            n = int(arr.shape[axis])
            rng = spec.range_of(axis)
            if rng is not None:
                if not rng.min <= n <= rng.max:
                    raise InputError(
                        f"Input {spec.name!r} has size {n} on axis {axis}, outside the model's range "
                        f"{rng.min}..{rng.max} for that axis."
                    )
                symbol = str(spec.shape[axis])
                seen = symbols.setdefault(symbol, (spec.name, axis, n))
                if seen[2] != n:
                    raise InputError(
                        f"Input {spec.name!r} has size {n} on axis {axis} but input {seen[0]!r} has size "
                        f"{seen[2]} on axis {seen[1]}; the model needs them equal ({symbol})."
                    )
                continue
            if batch_size is None:
                batch_size = n
            elif n != batch_size:
                raise InputError(
                    f"Input {spec.name!r} has batch {n} but another input has batch {batch_size}."
                )
    if batch_size is None:  # a model with static shapes: its batch is the first axis it fixes
        batch_size = next((int(feeds[s.name].shape[0]) for s in specs if s.shape), 1)
    if not batch.min <= batch_size <= batch.max:
        raise InputError(f"Batch size {batch_size} is outside the engine's profile {batch.min}..{batch.max}.")
    return batch_size


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
