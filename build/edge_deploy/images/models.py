"""Several models in one runtime image: what each model is (``ModelSpec``, from ``--model NAME=PATH`` or a
models.yaml), and the bake file that converts each and puts each in its own last layer.

The runtime image of several models is ``runtime-base`` (docker/runtime.Dockerfile: the runtime without a
model) plus one ``COPY --link`` layer per model at ``/opt/edge/models/<name>/`` (each a complete bundle
directory, the format of ``/opt/edge/bundle``), then the optional ``pipelines.json``. ``--link`` layers do
not depend on the layers below them, so a release that changes one model moves that model's layer only.
A Dockerfile cannot loop, so the last stage is generated here and passed to bake in a generated bake file
(JSON) that adds a ``model-<name>`` target per model (the ``bundle`` target with that model's arguments)
and turns ``runtime`` into the generated stage.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_deploy.images.result import ImageError
from edge_runtime.bundle import PRECISIONS, BatchProfile, ModelBundle
from edge_runtime.errors import BundleError

# A model's name: its directory under /opt/edge/models and its path under /v2/models/ (the runtime's rule).
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# NAME:SHAPE[:DTYPE] as `edge-deploy convert --input` takes it (e.g. image:Bx3x96..224x96); nothing a shell
# would expand, since the convert stage word-splits the list.
INPUT_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]{0,127}:[A-Za-z0-9.]{1,128}(?::[a-z0-9]{1,16})?\Z")
MODELS_ROOT = "/opt/edge/models"
PIPELINES_FILE = "pipelines.json"
_KEYS = ("name", "path", "precision", "calibration", "batch", "inputs")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a release: a .pt/.onnx file or a prebuilt bundle directory, converted with its own
    precision, calibration, batch profile and input overrides."""

    name: str
    path: Path  # absolute
    precision: str = "fp16"
    calibration: Path | None = None  # absolute, in the model's directory (the build context)
    batch: str = "1,1,8"
    inputs: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if not self.path.exists():
            raise ImageError(f"Model {self.name!r}: {self.path} does not exist.")
        if self.precision not in PRECISIONS:
            raise ImageError(
                f"Model {self.name!r} has precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}."
            )
        if self.calibration is not None:
            if not self.calibration.is_file():
                raise ImageError(f"Model {self.name!r}: calibration {self.calibration} is not a file.")
            if self.calibration.parent != self.path.parent:
                raise ImageError(
                    f"Model {self.name!r}: calibration {self.calibration} must be in the model's directory "
                    f"{self.path.parent} (the build context)."
                )
        try:
            BatchProfile.parse(self.batch)
        except BundleError as exc:
            raise ImageError(f"Model {self.name!r}: {exc}") from None
        for spec in self.inputs:
            if not INPUT_SPEC.match(spec):
                raise ImageError(
                    f"Model {self.name!r} has input {spec!r}; expected NAME:SHAPE[:DTYPE] such as "
                    "image:Bx3x224x224 or tokens:Bx16:int64."
                )

    @property
    def target(self) -> str:
        """Its bake target (the converted bundle) and the build context the runtime copies it from."""
        return f"model-{self.name}"

    def args(self) -> dict[str, str]:
        """The convert stage's arguments for this model."""
        return {
            "MODEL": self.path.name,
            "PRECISION": self.precision,
            "CALIBRATION": self.calibration.name if self.calibration else "",
            "BATCH": self.batch,
            "INPUTS": " ".join(self.inputs),
        }


@dataclass(frozen=True)
class ModelSet:
    """The models of one image (sorted by name: the layer order and the runtime's default model) and the
    pipelines file passed through to /opt/edge/models/pipelines.json."""

    models: tuple[ModelSpec, ...]
    pipelines: Path | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ImageError("A model set needs at least one model.")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ImageError(f"Model name {dup[0]!r} is given twice; each model needs its own name.")
        object.__setattr__(self, "models", tuple(sorted(self.models, key=lambda m: m.name)))
        if self.pipelines is not None:
            check_pipelines(self.pipelines, names)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise ImageError(
            f"Model name {name!r} is not allowed: lower-case letters, digits, '_' and '-', starting with a "
            "letter or digit, at most 63 characters."
        )
    return name


def parse_model_option(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` → the name and the path as given."""
    name, sep, path = value.partition("=")
    if not sep or not path:
        raise ImageError(f"Model {value!r} is not NAME=PATH (e.g. policy=policy.pt).")
    return check_model_name(name), Path(path)


def is_named_model(value: str) -> bool:
    """Whether a ``--model`` value is the NAME=PATH form (else it is the single-model PATH form)."""
    name, sep, _ = value.partition("=")
    return bool(sep) and MODEL_NAME.match(name) is not None


def models_from_options(
    values: Sequence[str], precision: str = "fp16", calibration: Path | None = None
) -> tuple[ModelSpec, ...]:
    """ModelSpecs for repeated ``--model NAME=PATH``: each with the command's precision; ``calibration``
    (the command's --calibration) goes to the models whose directory holds it."""
    out = []
    for value in values:
        name, path = parse_model_option(value)
        path = path.resolve()
        cal = calibration.resolve() if calibration is not None else None
        out.append(
            ModelSpec(name, path, precision, cal if cal is not None and cal.parent == path.parent else None)
        )
    return tuple(out)


def load_models_file(path: Path) -> ModelSet:
    """A models.yaml: ``models:`` (a list of name, path, and optionally precision, calibration, batch,
    inputs) and optionally ``pipelines:`` (a pipelines.json); paths are relative to the file."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ImageError(f"Models file {path} cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ImageError(f"Models file {path} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise ImageError(f"Models file {path} needs a non-empty 'models:' list.")
    unknown = sorted(str(k) for k in doc if k not in ("models", "pipelines"))
    if unknown:
        raise ImageError(f"Models file {path} has an unknown key {unknown[0]!r} (models, pipelines).")
    here = path.resolve().parent
    specs = []
    for i, entry in enumerate(doc["models"]):
        where = f"Models file {path}, model {i + 1}"
        if not isinstance(entry, dict):
            raise ImageError(f"{where} is not a mapping with name and path.")
        bad = sorted(str(k) for k in entry if k not in _KEYS)
        if bad:
            raise ImageError(f"{where} has an unknown key {bad[0]!r} ({', '.join(_KEYS)}).")
        for key in ("name", "path"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ImageError(f"{where} needs {key!r} as a string.")
        for key in ("precision", "calibration", "batch"):
            if key in entry and not isinstance(entry[key], str):
                raise ImageError(
                    f"{where} has {key!r} of type {type(entry[key]).__name__}; expected a string."
                )
        inputs = entry.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise ImageError(f"{where} has 'inputs' that is not a list of NAME:SHAPE[:DTYPE] strings.")
        specs.append(
            ModelSpec(
                name=check_model_name(entry["name"]),
                path=(here / entry["path"]).resolve(),
                precision=entry.get("precision", "fp16"),
                calibration=(here / entry["calibration"]).resolve() if entry.get("calibration") else None,
                batch=str(entry.get("batch", "1,1,8")),
                inputs=tuple(inputs),
            )
        )
    pipelines = doc.get("pipelines")
    if pipelines is not None and not isinstance(pipelines, str):
        raise ImageError(f"Models file {path} has 'pipelines' that is not a path to a JSON file.")
    return ModelSet(tuple(specs), (here / pipelines).resolve() if pipelines else None)


def check_pipelines(
    path: Path, names: Sequence[str], bundles: Mapping[str, ModelBundle] | None = None
) -> None:
    """A pipelines file must read with the runtime's own reader (edge_runtime.repository) and use only
    models of the set; with ``bundles`` (the converted models) every input and output it names is checked
    too. It is then passed through unchanged."""
    from edge_runtime.repository import load_pipelines

    if not path.is_file():
        raise ImageError(f"Pipelines file {path} does not exist.")
    try:
        pipelines = load_pipelines(path, bundles)
    except BundleError as exc:
        raise ImageError(str(exc)) from None
    for pipeline in pipelines:
        unknown = [m for m in pipeline.models if m not in names]
        if unknown:
            raise ImageError(
                f"Pipelines file {path}: pipeline {pipeline.name!r} uses model {unknown[0]!r}, which is not "
                f"one of {', '.join(names)}."
            )


def models_digest(bundles: dict[str, str]) -> str:
    """One sha256 for a set of bundles (name → bundle sha256): the runtime image's bundle label."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(bundles.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def models_dockerfile(models: ModelSet, label: str = "") -> str:
    """The runtime's last stage: ``runtime-base`` plus one layer per model, then pipelines.json."""
    lines = [
        "# generated by edge-deploy image build (edge_deploy.images.models): one layer per model, last",
        "FROM runtime-base AS models",
    ]
    lines += [f"COPY --link --from={m.target} / {MODELS_ROOT}/{m.name}/" for m in models.models]
    if models.pipelines is not None:
        lines.append(f"COPY --link --from=pipelines /{PIPELINES_FILE} {MODELS_ROOT}/{PIPELINES_FILE}")
    if label:
        lines.append(f'LABEL io.edge-deploy.models="{label}"')
    return "\n".join(lines) + "\n"


def models_label(bundles: dict[str, dict[str, str]]) -> str:
    """``name:precision:sha256`` per model, comma-separated (the io.edge-deploy.models label)."""
    for name, b in bundles.items():
        check_model_name(name)
        if b["precision"] not in PRECISIONS or not re.fullmatch(r"[0-9a-f]{64}", b["sha256"]):
            raise ImageError(f"Model {name!r}: the converter wrote an unexpected precision or sha256.")
    return ",".join(f"{n}:{b['precision']}:{b['sha256']}" for n, b in sorted(bundles.items()))


def models_bake_file(
    models: ModelSet, *, pipelines_dir: Path | None = None, label: str = "", epoch: str = ""
) -> dict[str, Any]:
    """The generated bake file (JSON), read after docker/docker-bake.hcl: a ``model-<name>`` target per
    model (the ``bundle`` target with that model's directory and arguments) and ``runtime`` as the
    generated stage on ``runtime-base``. ``epoch`` (SOURCE_DATE_EPOCH) goes to every target the runtime is
    built from, as bake passes it only to the targets asked for: one commit gives one digest and reuses
    the cache of the bundles exported first."""
    dated = {"SOURCE_DATE_EPOCH": epoch} if epoch else {}
    targets: dict[str, Any] = {
        m.target: {
            "inherits": ["bundle"],
            "contexts": {"model": str(m.path.parent)},
            "args": {**m.args(), **dated},
        }
        for m in models.models
    }
    if dated:
        targets["runtime-base"] = {"args": dated}
    contexts = {"runtime-base": "target:runtime-base"}
    contexts.update({m.target: f"target:{m.target}" for m in models.models})
    if models.pipelines is not None:
        if pipelines_dir is None:
            raise ImageError("A pipelines file needs a directory to stage it in.")
        contexts["pipelines"] = str(pipelines_dir)
    targets["runtime"] = {
        "dockerfile-inline": models_dockerfile(models, label),
        "target": "models",
        "contexts": contexts,
    }
    return {"target": targets}


def convert_repository(
    models_file: Path,
    output: Path,
    options: dict[str, Any],
    on_model: Callable[[str, str], None] = lambda name, spec: None,
) -> dict[str, ModelBundle]:
    """Convert every model of a models.yaml on this host into ``output/<name>/`` (the runtime's model
    repository; a prebuilt bundle is copied as the image build takes it), then check and copy its
    pipelines file; ``options`` are ConvertOptions fields for all. Each model's bundle by name."""
    import shutil

    from edge_deploy.model import ConvertOptions, convert
    from edge_runtime.bundle import MANIFEST

    models = load_models_file(models_file)
    output.mkdir(parents=True, exist_ok=True)
    done: dict[str, ModelBundle] = {}
    for m in models.models:
        on_model(m.name, f"{m.path} ({m.precision})")
        if (m.path / MANIFEST).is_file():
            if (output / m.name).exists() and not options.get("force"):
                raise ImageError(f"{output / m.name} exists; use `force` to replace it.")
            shutil.rmtree(output / m.name, ignore_errors=True)
            shutil.copytree(m.path, output / m.name)
            done[m.name] = ModelBundle.load(output / m.name)
            continue
        opts = ConvertOptions(
            precision=m.precision,
            calibration=m.calibration,
            batch=BatchProfile.parse(m.batch),
            inputs=m.inputs,
            **options,
        )
        done[m.name] = convert(m.path, output / m.name, opts).bundle
    if models.pipelines is not None:
        check_pipelines(models.pipelines, models.names, done)
        shutil.copyfile(models.pipelines, output / PIPELINES_FILE)
    return done
