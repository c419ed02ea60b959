"""The model repository: several bundles served side by side, the pipelines that chain them, and the
memory budget checked before any of them loads.

Layout (docs/runtime.md, "Model repository"): ``<models>/<name>/`` is one complete model bundle (today's
format), ``<models>/pipelines.json`` optionally declares pipelines. The host side validates a user's
pipelines file with ``load_pipelines`` before it goes into a release, so both sides share one reading.
No heavy imports here: the host imports this module to validate, the service to serve.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import MANIFEST, BatchProfile, ModelBundle, TensorSpec
from edge_runtime.errors import BundleError, EdgeError, InputError
from edge_runtime.jetson import GIB

MIB = 1 << 20
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: no trailing newline slips by
PIPELINES_FILE = "pipelines.json"
PIPELINES_VERSION = 1
# Memory left to L4T, its services and the service's own Python when the budget comes from the board's
# total (an Orin Nano shares its 8 GB between CPU and GPU, so this is not a GPU-only number).
SYSTEM_RESERVE_BYTES = GIB
# Working memory per request slot beyond the engine itself: input and output buffers at the largest batch,
# twice (host and device copy), ACTIVATION_FACTOR more for the intermediate tensors, plus a fixed amount
# for the execution context or session state. An estimate, named as one in the refusal and the docs.
ACTIVATION_FACTOR = 4
SLOT_OVERHEAD_BYTES = 16 * MIB


def check_model_name(name: str, what: str = "Model name") -> str:
    """Names become URL path segments, metric labels and directory names: one pattern, checked once."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise BundleError(
            f"{what} {name!r} is not valid; use 1-63 lower-case letters, digits, '_' or '-', starting "
            "with a letter or digit."
        )
    return name


def is_repository(path: Path) -> bool:
    """True when ``path`` is a directory holding at least one model bundle directory."""
    try:
        return path.is_dir() and any(p.is_dir() and (p / MANIFEST).is_file() for p in path.iterdir())
    except OSError:
        return False


def discover(path: Path) -> dict[str, Path]:
    """``{name: bundle dir}`` of a repository in sorted order; a directory that is not a bundle, or is
    named against the pattern, is refused with its name rather than skipped (a typo must not drop a model)."""
    if not path.is_dir():
        raise BundleError(f"Model repository {path} does not exist or is not a directory.")
    found: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        check_model_name(entry.name, f"Model directory {entry}: name")
        if not (entry / MANIFEST).is_file():
            raise BundleError(
                f"{entry} in the model repository is not a model bundle: {MANIFEST} is missing."
            )
        found[entry.name] = entry
    if not found:
        raise BundleError(f"Model repository {path} holds no model bundle directory.")
    return found


# -- pipelines ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineStep:
    """One model of a pipeline; ``inputs`` maps the model's input name to ``"<earlier model>.<output>"``
    (inputs not listed are pipeline inputs of the same name)."""

    model: str
    inputs: tuple[tuple[str, str], ...] = ()

    def source(self, name: str) -> str | None:
        return dict(self.inputs).get(name)


@dataclass(frozen=True)
class Pipeline:
    """A declared chain of models; ``inputs``/``outputs``/``batch`` are filled once checked against bundles."""

    name: str
    steps: tuple[PipelineStep, ...]
    output_refs: tuple[str, ...] = ()  # "<model>.<output>"; empty: every output of the last step
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batch: BatchProfile | None = None
    # Per step, the pipeline inputs its model takes directly (those no earlier model feeds).
    direct: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists."""
        return {
            "name": self.name,
            "models": self.models,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        call: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Run the steps in order through ``call(model, feeds)``; intermediate tensors stay in this process."""
        values: dict[str, np.ndarray] = {}
        for step in self.steps:
            wanted = dict(step.inputs)
            step_feeds: dict[str, np.ndarray] = {}
            for name in self._step_inputs(step):
                ref = wanted.get(name)
                step_feeds[name] = values[ref] if ref is not None else feeds[name]
            for out_name, arr in call(step.model, step_feeds).items():
                values[f"{step.model}.{out_name}"] = arr
        return {ref.split(".", 1)[1]: values[ref] for ref in self._refs()}

    def _refs(self) -> tuple[str, ...]:
        if self.output_refs:
            return self.output_refs
        last = self.steps[-1].model
        return tuple(f"{last}.{s.name}" for s in self.outputs)

    def _step_inputs(self, step: PipelineStep) -> list[str]:
        return [n for n, _ in step.inputs] + list(dict(self.direct).get(step.model, ()))


def _shape_compatible(src: TensorSpec, dst: TensorSpec) -> bool:
    """Same rank, the batch axis where the other has it, fixed sizes equal; ranged axes must match exactly."""
    if len(src.shape) != len(dst.shape):
        return False
    for a, b in zip(src.shape, dst.shape, strict=True):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            return False
        if isinstance(a, str) != isinstance(b, str):
            return False
    return src.ranges == dst.ranges


def _parse_pipeline(raw: Any, where: str) -> Pipeline:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: each pipeline must be a JSON object.")
    unknown = sorted(set(raw) - {"name", "steps", "outputs"})
    if unknown:
        raise BundleError(f"{where}: unknown key {unknown[0]!r} (a pipeline has name, steps, outputs).")
    name = check_model_name(raw.get("name"), f"{where}: pipeline name")  # type: ignore[arg-type]
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise BundleError(f"{where}: pipeline {name!r} needs a non-empty list of steps.")
    steps: list[PipelineStep] = []
    seen: set[str] = set()
    for i, s in enumerate(steps_raw):
        if not isinstance(s, dict) or set(s) - {"model", "inputs"}:
            raise BundleError(
                f"{where}: step {i + 1} of pipeline {name!r} must be an object with model and inputs only."
            )
        model = check_model_name(s.get("model"), f"{where}: step {i + 1} of pipeline {name!r}: model")  # type: ignore[arg-type]
        if model in seen:
            raise BundleError(f"{where}: pipeline {name!r} runs model {model!r} twice; each model runs once.")
        inputs = s.get("inputs", {})
        if not isinstance(inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()
        ):
            raise BundleError(
                f"{where}: step {model!r} of pipeline {name!r}: inputs must map input names to "
                '"<model>.<output>" strings.'
            )
        for k, ref in inputs.items():
            src = ref.split(".", 1)[0]
            if "." not in ref or src not in seen:
                raise BundleError(
                    f"{where}: step {model!r} of pipeline {name!r} takes input {k!r} from {ref!r}, which is "
                    'not "<earlier model>.<output>".'
                )
        seen.add(model)
        steps.append(PipelineStep(model, tuple(sorted(inputs.items()))))
    outs = raw.get("outputs", [])
    if not isinstance(outs, list) or not all(isinstance(o, str) for o in outs):
        raise BundleError(f'{where}: outputs of pipeline {name!r} must be a list of "<model>.<output>".')
    for ref in outs:
        if "." not in ref or ref.split(".", 1)[0] not in seen:
            raise BundleError(f'{where}: pipeline {name!r} outputs {ref!r}, which is not "<model>.<output>".')
    return Pipeline(name, tuple(steps), tuple(outs))


def _resolve(p: Pipeline, bundles: Mapping[str, ModelBundle], where: str) -> Pipeline:
    """Check a parsed pipeline against the served models; fill its inputs, outputs and batch profile."""
    for m in p.models:
        if m not in bundles:
            raise BundleError(
                f"{where}: pipeline {p.name!r} uses model {m!r}, which the repository does not hold "
                f"(it holds {', '.join(sorted(bundles)) or 'none'})."
            )
    if p.name in bundles:
        raise BundleError(f"{where}: pipeline {p.name!r} has the name of a model; name it apart.")
    outputs_of = {m: {s.name: s for s in bundles[m].outputs} for m in p.models}
    inputs: dict[str, TensorSpec] = {}
    direct: list[tuple[str, tuple[str, ...]]] = []
    for step in p.steps:
        b = bundles[step.model]
        by_name = {s.name: s for s in b.inputs}
        own: list[str] = []
        for k, ref in step.inputs:
            if k not in by_name:
                raise BundleError(
                    f"{where}: pipeline {p.name!r} feeds input {k!r} of {step.model!r}, which takes "
                    f"{', '.join(sorted(by_name))}."
                )
            src_model, src_out = ref.split(".", 1)
            src = outputs_of[src_model].get(src_out)
            if src is None:
                raise BundleError(
                    f"{where}: pipeline {p.name!r} reads output {src_out!r} of {src_model!r}, which gives "
                    f"{', '.join(sorted(outputs_of[src_model]))}."
                )
            dst = by_name[k]
            if src.dtype != dst.dtype or not _shape_compatible(src, dst):
                raise BundleError(
                    f"{where}: pipeline {p.name!r}: output {ref!r} ({src.dtype} {list(src.shape)}) does not fit "
                    f"input {k!r} of {step.model!r} ({dst.dtype} {list(dst.shape)})."
                )
        for s in b.inputs:
            if step.source(s.name) is not None:
                continue
            own.append(s.name)
            first = inputs.setdefault(s.name, s)
            if first.dtype != s.dtype or list(first.shape) != list(s.shape):
                raise BundleError(
                    f"{where}: pipeline {p.name!r}: two models take pipeline input {s.name!r} with different "
                    f"dtypes or shapes ({first.dtype} {list(first.shape)} vs {s.dtype} {list(s.shape)})."
                )
        direct.append((step.model, tuple(own)))
    refs = p.output_refs or tuple(f"{p.steps[-1].model}.{s.name}" for s in bundles[p.steps[-1].model].outputs)
    outs: list[TensorSpec] = []
    for ref in refs:
        m, o = ref.split(".", 1)
        spec = outputs_of[m].get(o)
        if spec is None:
            raise BundleError(
                f"{where}: pipeline {p.name!r} outputs {ref!r}, but {m!r} gives {', '.join(sorted(outputs_of[m]))}."
            )
        if any(x.name == o for x in outs):
            raise BundleError(f"{where}: pipeline {p.name!r} outputs two tensors named {o!r}; keep one.")
        outs.append(spec)
    profiles = [bundles[m].manifest.batch for m in p.models]
    lo, hi = max(b.min for b in profiles), min(b.max for b in profiles)
    if lo > hi:
        raise BundleError(
            f"{where}: pipeline {p.name!r}: its models' batch profiles do not overlap "
            f"({', '.join(f'{m} {bundles[m].manifest.batch}' for m in p.models)})."
        )
    opt = min(max(profiles[0].opt, lo), hi)
    return Pipeline(
        p.name, p.steps, refs, tuple(inputs.values()), tuple(outs), BatchProfile(lo, opt, hi), tuple(direct)
    )


def load_pipelines(
    source: Path | str | Mapping[str, Any], bundles: Mapping[str, ModelBundle] | None = None
) -> list[Pipeline]:
    """Read and check a pipelines file (a path, JSON text, or the parsed object). With ``bundles`` (the
    repository's models by name) every reference is checked against the models' inputs and outputs too;
    without, only the structure. Raises ``BundleError`` with one sentence naming the problem."""
    where = PIPELINES_FILE
    if isinstance(source, Path):
        where = str(source)
        try:
            data: Any = json.loads(source.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{where} cannot be read as JSON ({exc}).") from None
    elif isinstance(source, str):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where} is not JSON ({exc}).") from None
    else:
        data = source
    if not isinstance(data, dict) or set(data) - {"version", "pipelines"}:
        raise BundleError(f"{where} must be a JSON object with version and pipelines.")
    if data.get("version", PIPELINES_VERSION) != PIPELINES_VERSION:
        raise BundleError(f"{where} has version {data.get('version')!r}; this runtime reads version 1.")
    raw = data.get("pipelines", [])
    if not isinstance(raw, list):
        raise BundleError(f"{where}: pipelines must be a list.")
    pipelines = [_parse_pipeline(r, where) for r in raw]
    names = [p.name for p in pipelines]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise BundleError(f"{where} declares pipeline {dup!r} twice.")
    if bundles is not None:
        pipelines = [_resolve(p, bundles, where) for p in pipelines]
    return pipelines


def check_pipeline_feeds(p: Pipeline, feeds: Mapping[str, np.ndarray]) -> None:
    """Names, dtypes and shapes of a pipeline request, in one sentence (the steps check theirs again)."""
    from edge_runtime.backends.base import check_feeds

    assert p.batch is not None, "pipeline not resolved against the repository"
    try:
        check_feeds(list(p.inputs), feeds, p.batch)
    except InputError as exc:
        raise InputError(f"Pipeline {p.name!r}: {exc}") from None


# -- slots ----------------------------------------------------------------------------------------------
def parse_slots(text: str | int | None, names: list[str], default: int = 1) -> dict[str, int]:
    """``EDGE_SLOTS``: ``2`` for every model, or ``detector=2,policy=1`` (others keep ``default``)."""
    slots = dict.fromkeys(names, default)
    if text is None or text == "":
        return slots
    if isinstance(text, int) or str(text).strip().isdigit():
        n = int(text)
        if not 1 <= n <= 64:
            raise EdgeError(f"Request slots {n} is outside 1..64.")
        return dict.fromkeys(names, n)
    for part in str(text).split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not value.strip().isdigit():
            raise EdgeError(f"Request slots {text!r} are not N or name=N[,name=N...].")
        if name not in slots:
            raise EdgeError(f"Request slots name model {name!r}, which is not served ({', '.join(names)}).")
        n = int(value)
        if not 1 <= n <= 64:
            raise EdgeError(f"Request slots {n} for {name!r} is outside 1..64.")
        slots[name] = n
    return slots


# -- memory budget --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """What one model is expected to hold once loaded: its engine, and working memory for its slots."""

    model: str
    engine_bytes: int
    working_bytes: int
    slots: int

    @property
    def total(self) -> int:
        return self.engine_bytes + self.working_bytes


def _nbytes(spec: TensorSpec, batch: int) -> int:
    return int(np.prod(spec.concrete_shape(batch, "max"), dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def footprint(name: str, bundle: ModelBundle, slots: int, engine_bytes: int | None = None) -> Footprint:
    """Engine size (the cached engine's, else the bundle's model files) plus per slot: I/O at the largest
    batch twice (host and device), ``ACTIVATION_FACTOR`` times more for activations, and a fixed overhead."""
    if engine_bytes is None:
        files = [bundle.manifest.model_file] + (
            [bundle.manifest.model_data] if bundle.manifest.model_data else []
        )
        engine_bytes = sum((bundle.path / f).stat().st_size for f in files if (bundle.path / f).is_file())
    io = sum(_nbytes(s, bundle.manifest.batch.max) for s in [*bundle.inputs, *bundle.outputs])
    per_slot = io * (2 + ACTIVATION_FACTOR) + SLOT_OVERHEAD_BYTES
    return Footprint(name, engine_bytes, per_slot * slots, slots)


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes the models may use, and where that number came from (shown in the refusal)."""

    bytes: int
    source: str


def memory_budget(
    board_model: str | None, override_mb: float | None = None, meminfo: Path | None = None
) -> MemoryBudget | None:
    """``EDGE_MEMORY_BUDGET_MB`` if set; else the Jetson module's memory from the table (the smallest
    variant: the table cannot tell 32 from 64 GB) less ``SYSTEM_RESERVE_BYTES``; else ``MemTotal`` less
    the same; None when nothing is known (no check)."""
    from edge_runtime.jetson import module_from_device_tree

    if override_mb is not None:
        return MemoryBudget(int(override_mb * MIB), f"EDGE_MEMORY_BUDGET_MB={override_mb:g}")
    module = module_from_device_tree(board_model) if board_model else None
    if module is not None:
        total = min(module.memory_gb) * GIB
        return MemoryBudget(
            total - SYSTEM_RESERVE_BYTES,
            f"{module.name}: {min(module.memory_gb)} GB shared by CPU and GPU, less {_fmt(SYSTEM_RESERVE_BYTES)} "
            "for the system",
        )
    try:
        for line in (meminfo or Path("/proc/meminfo")).read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                return MemoryBudget(
                    total - SYSTEM_RESERVE_BYTES,
                    f"MemTotal {_fmt(total)}, less {_fmt(SYSTEM_RESERVE_BYTES)} for the system",
                )
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fmt(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def check_budget(
    footprints: list[Footprint], budget: MemoryBudget | None, extra: tuple[str, int] | None = None
) -> int:
    """The total expected bytes; raises ``EdgeError`` with one sentence naming every model and number when
    they exceed the budget (``extra``: a one-off need such as a TensorRT build workspace)."""
    total = sum(f.total for f in footprints) + (extra[1] if extra else 0)
    if budget is None or total <= budget.bytes:
        return total
    parts = ", ".join(
        f"{f.model} {_fmt(f.engine_bytes)} engine + {_fmt(f.working_bytes)} working ({f.slots} slot"
        f"{'s' if f.slots != 1 else ''})"
        for f in footprints
    )
    if extra:
        parts += f", plus {_fmt(extra[1])} {extra[0]}"
    raise EdgeError(
        f"The models do not fit in memory: {parts} need {_fmt(total)} (estimated), over the budget of "
        f"{_fmt(budget.bytes)} ({budget.source}); serve fewer models or fewer slots."
    )
