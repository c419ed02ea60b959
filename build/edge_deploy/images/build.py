"""Build the converter and runtime images for a model: the orchestration of one ``image build``.

Builds are offline and reproducible: the host fills one wheelhouse per image (images/wheelhouse.py), the
tool's sources and build files are staged as a checkout-shaped context (images/files.py), and the runtime
image is built in two bake calls (images/bake.py): first the ``bundle`` target exports the converted
bundle, so its sha256 can label the image, then ``converter`` + ``runtime`` (the model stage is cached from
the first call).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edge_deploy.images.bake import bake, base_digest, export_bundle, export_model_bundles
from edge_deploy.images.files import stage_context, tool_files, work_dir
from edge_deploy.images.lock import LOCK_DIR
from edge_deploy.images.models import (
    PIPELINES_FILE,
    ModelSet,
    check_pipelines,
    models_bake_file,
    models_digest,
    models_label,
)
from edge_deploy.images.result import BuildResult, ImageError
from edge_deploy.images.wheelhouse import (
    dockerfile_builds_ros2,
    has_ros2,
    prepare_wheelhouses,
    requirements_for,
    runtime_extras,
    runtime_wheelhouse,
)
from edge_runtime.bundle import ModelBundle
from edge_runtime.jetpack import versions

# Bases and Pythons come from the JetPack table's default row (the converter's from the table too); our
# stand-in base has its own Python (the row's ``standin.python``), passed with --runtime-python.
DEFAULT_L4T_BASE = str(versions().default.base_image)
DEFAULT_CONVERTER_BASE = versions().converter_base
DEFAULT_CONVERTER_PYTHON = versions().converter_python
DEFAULT_RUNTIME_PYTHON = os.environ.get("EDGE_RUNTIME_PYTHON", versions().default.python)
TORCH_SPEC = "torch==2.13.0"  # the converter's torch: a CPU wheel (scripts/setup installs the same)


def git_sha(root: Path) -> str:
    """The commit checked out at ``root``; "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], text=True, capture_output=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The time of a build made outside a git checkout (an installed tool): fixed, so such builds are
# reproducible too (the zip epoch, as wheels use).
NO_GIT_EPOCH = 315532800  # 1980-01-01T00:00:00Z


def commit_time(root: Path) -> int | None:
    """The commit time of the checkout at ``root`` (seconds), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%ct"],
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return int(out) if out.isdigit() else None


def source_date_epoch(root: Path | None) -> int:
    """SOURCE_DATE_EPOCH for a build: the environment's when set (release.yml sets the commit time), else
    the commit time of the checkout built, else the fixed NO_GIT_EPOCH. It dates the ``created`` label and
    every file and layer BuildKit writes (rewrite-timestamp), so one commit gives one digest."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if value:
        if not value.isdigit():
            raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds.")
        return int(value)
    found = commit_time(root) if root is not None else None
    return found if found is not None else NO_GIT_EPOCH


@contextmanager
def _context(source: Path | None) -> Iterator[tuple[Path, str, int]]:
    """The bake context, the revision it was made from and its SOURCE_DATE_EPOCH: ``source`` as it is, or
    the running tool's files staged under the work directory (removed afterwards)."""
    if source is not None:
        yield source, git_sha(source), source_date_epoch(source)
        return
    files = tool_files()
    tmp_root = work_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="context-", dir=tmp_root) as tmp:
        yield (
            stage_context(Path(tmp) / "context", files),
            git_sha(files.checkout) if files.checkout else "unknown",
            source_date_epoch(files.checkout),
        )


def build_images(
    *,
    model_dir: Path | None = None,
    model: str = "",
    models: ModelSet | None = None,
    precision: str = "fp16",
    calibration: str = "",
    version: str = "dev",
    registry: str = "localhost:5000",
    image_prefix: str = "edge-deploy",
    l4t_base: str | None = None,
    converter_base: str | None = None,
    runtime_python: str | None = None,
    runtime_platforms: str = "linux/arm64",
    tags: Sequence[str] = (),
    push: bool = False,
    overrides: Sequence[str] = (),
    progress: str = "auto",
    bundle_out: Path | None = None,
    on_step: Callable[[str], None] = lambda s: None,
    source: Path | None = None,
    revision: str | None = None,
) -> BuildResult:
    """Wheelhouses → bundle export → bake converter + runtime; return both images and the bundle's identity.

    ``source`` is a checkout-shaped tree to build instead of the running tool's own files; ``revision``
    labels the images (default: the commit of the checkout built, when it is one). ``bundle_out`` keeps a
    copy of the bundle baked into the runtime image (for checks on the host); with ``models`` (several
    models, each its own layer at /opt/edge/models/<name>/) it gets one directory per model.
    """
    if models is None:
        if model_dir is None or not model:
            raise ImageError("An image build needs a model (or several, each with a name).")
        if not (model_dir / model).exists():
            raise ImageError(f"Model {model_dir / model} does not exist.")
    elif model_dir is not None or model:
        raise ImageError("Give one model, or several models each with a name, not both.")
    python = runtime_python or DEFAULT_RUNTIME_PYTHON
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with _context(source) as (context, context_revision, epoch):
        timings["stage"] = time.monotonic() - t0
        on_step(f"wheelhouses (runtime Python {python})")
        t0 = time.monotonic()
        pyproject, requirements_py = context / "pyproject.toml", context / "docker" / "requirements.py"
        extras = runtime_extras(context / "docker" / "runtime.Dockerfile")
        device = requirements_for(extras, pyproject, requirements_py)
        # read while the staged context exists (it is removed when the with block ends)
        ros2 = has_ros2(device) or dockerfile_builds_ros2(context / "docker" / "runtime.Dockerfile")
        root = work_dir() / "wheelhouse"
        houses = prepare_wheelhouses(
            root=root,
            runtime_python=python,
            device=device,
            host=requirements_for("host", pyproject, requirements_py),
            converter_python=DEFAULT_CONVERTER_PYTHON,
            torch_spec=TORCH_SPEC,
            locks=context / LOCK_DIR,
        )
        runtime_house = runtime_wheelhouse(runtime_platforms, houses, python=python, device=device, root=root)
        timings["wheelhouses"] = time.monotonic() - t0
        variables = {
            "REGISTRY": registry,
            "IMAGE_PREFIX": image_prefix,
            "VERSION": version,
            "TAGS": ",".join(tags),
            "MODEL_DIR": str(model_dir.resolve()) if model_dir is not None else ".",
            "MODEL": model or "policy.pt",
            "PRECISION": precision,
            "CALIBRATION": calibration,
            "TORCH_SPEC": TORCH_SPEC,
            "WHEELHOUSE": str(houses["converter"]),
            "RUNTIME_WHEELHOUSE": str(runtime_house),
            "RUNTIME_PLATFORMS": runtime_platforms,
            "GIT_SHA": revision or context_revision,
            # the commit time: the created label, and BuildKit's file and layer times (bake.py rewrites them)
            "SOURCE_DATE_EPOCH": str(epoch),
            "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
            # the table's bases, passed explicitly: the bake file's own defaults are copies (checked for drift)
            "L4T_BASE": l4t_base or DEFAULT_L4T_BASE,
            "CONVERTER_BASE": converter_base or DEFAULT_CONVERTER_BASE,
        }
        # the bases' digests as the registry has them now (org.opencontainers.image.base.digest)
        variables["L4T_BASE_DIGEST"] = base_digest(variables["L4T_BASE"])
        variables["CONVERTER_BASE_DIGEST"] = base_digest(variables["CONVERTER_BASE"])
        with tempfile.TemporaryDirectory(prefix="edge-bundle-") as tmp:
            bake_files: list[Path] = []
            built: list[dict[str, str]] = []
            t0 = time.monotonic()
            if models is None:
                on_step("model stage → bundle")
                exported = Path(tmp) / "bundle"
                manifest = export_bundle(variables, exported, context=context, progress=progress)
                if bundle_out is not None:
                    shutil.rmtree(bundle_out, ignore_errors=True)
                    shutil.copytree(exported, bundle_out)
                variables["BUNDLE_SHA256"] = str(manifest.get("bundle_sha256", ""))
                variables["PRECISION"] = str(manifest.get("precision", precision))
            else:
                on_step(f"model stages → {len(models.models)} bundles ({', '.join(models.names)})")
                built = _model_bundles(models, variables, Path(tmp), context, progress, bundle_out)
                bake_files = [Path(tmp) / "models.bake.json"]
                variables["BUNDLE_SHA256"] = models_digest({b["name"]: b["bundle_sha256"] for b in built})
                variables["PRECISION"] = ",".join(sorted({b["precision"] for b in built}))
            timings["bundle"] = time.monotonic() - t0
            on_step("bake converter + runtime" + (" --push" if push else ""))
            t0 = time.monotonic()
            images = bake(
                ["converter", "runtime"],
                context=context,
                push=push,
                variables=variables,
                overrides=list(overrides),
                progress=progress,
                files=bake_files,
            )
            timings["images"] = time.monotonic() - t0
    return BuildResult(
        images=images,
        bundle_sha256=variables["BUNDLE_SHA256"],
        precision=variables["PRECISION"],
        ros2=ros2,
        variables=variables,
        timings=timings,
        models=built,
    )


def _model_bundles(
    models: ModelSet,
    variables: dict[str, str],
    tmp: Path,
    context: Path,
    progress: str,
    bundle_out: Path | None,
) -> list[dict[str, str]]:
    """Convert every model (one bake call, a target per model), then write the bake file that puts each
    bundle in its own layer, labelled with every bundle's sha256; each model's name, sha256, precision."""
    pipelines_dir = None
    if models.pipelines is not None:
        pipelines_dir = tmp / "pipelines"
        pipelines_dir.mkdir()
        shutil.copyfile(models.pipelines, pipelines_dir / PIPELINES_FILE)
    bake_file = tmp / "models.bake.json"
    epoch = variables.get("SOURCE_DATE_EPOCH", "")
    bake_file.write_text(json.dumps(models_bake_file(models, pipelines_dir=pipelines_dir, epoch=epoch)))
    dests = {m.target: tmp / "bundles" / m.name for m in models.models}
    export_model_bundles(variables, dests, context=context, files=[bake_file], progress=progress)
    # loaded (every file's sha256 checked): the content identity of a converted and of a prebuilt bundle alike
    loaded = {n: ModelBundle.load(d) for n, d in _by_name(dests).items()}
    bundles = {n: {"sha256": b.sha256, "precision": b.manifest.precision} for n, b in loaded.items()}
    if models.pipelines is not None:  # now against the models' own inputs and outputs
        check_pipelines(models.pipelines, models.names, loaded)
    # the label is known only now: the bake file is written again with it (the model targets are cached)
    label = models_label(bundles)
    bake_file.write_text(
        json.dumps(models_bake_file(models, pipelines_dir=pipelines_dir, label=label, epoch=epoch))
    )
    if bundle_out is not None:
        shutil.rmtree(bundle_out, ignore_errors=True)
        shutil.copytree(tmp / "bundles", bundle_out)
    return [
        {"name": n, "bundle_sha256": b["sha256"], "precision": b["precision"]} for n, b in bundles.items()
    ]


def _by_name(dests: dict[str, Path]) -> dict[str, Path]:
    """bake target (model-<name>) → directory, as model name → directory."""
    return {target.removeprefix("model-"): dest for target, dest in dests.items()}
