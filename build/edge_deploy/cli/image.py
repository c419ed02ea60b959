"""``edge-deploy image build``: converter + runtime images through buildx bake; digests and sizes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_deploy.cli.options import calibration_name, image_options, json_option
from edge_deploy.images import ImageError, ModelSet, build_images, load_models_file, models_from_options

F = TypeVar("F", bound=Callable[..., Any])


def models_options(f: F) -> F:
    """--model NAME=PATH (repeatable), --models FILE, --pipelines FILE: a release of several models."""
    for option in reversed(
        [
            click.option(
                "--model",
                "named_models",
                multiple=True,
                metavar="NAME=PATH",
                help="One of several models, by name (repeatable): each is its own last layer at "
                "/opt/edge/models/NAME/ and is served as NAME; converted with --precision (and --calibration "
                "where it sits beside the model).",
            ),
            click.option(
                "--models",
                "models_file",
                type=click.Path(path_type=Path),
                default=None,
                help="A models.yaml: models (name, path, precision, calibration, batch, inputs) and "
                "optionally pipelines (a pipelines.json); paths relative to the file.",
            ),
            click.option(
                "--pipelines",
                type=click.Path(path_type=Path),
                default=None,
                help="A pipelines.json for the models given with --model NAME=PATH (docs/runtime.md).",
            ),
        ]
    ):
        f = option(f)
    return f


def model_set(
    named: tuple[str, ...],
    models_file: Path | None,
    pipelines: Path | None,
    precision: str,
    calibration: Path | None,
) -> ModelSet | None:
    """The models of --model NAME=PATH or --models FILE (None: neither was given); one sentence when the
    forms are mixed."""
    if named and models_file is not None:
        raise ImageError("Give the models with --model NAME=PATH or with --models FILE, not both.")
    if models_file is not None:
        if pipelines is not None:
            raise ImageError(
                "--pipelines goes with --model NAME=PATH; a models file names its own pipelines."
            )
        return load_models_file(models_file)
    if named:
        return ModelSet(
            models_from_options(named, precision, calibration), pipelines.resolve() if pipelines else None
        )
    if pipelines is not None:
        raise ImageError("--pipelines needs several models (--model NAME=PATH).")
    return None


@click.group()
def image() -> None:
    """Build the x86 converter image and the L4T arm64 runtime image."""


@image.command("build")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@models_options
@click.option("--version", "version", default="dev", show_default=True, help="Image tag.")
@click.option("--tag", "tags", multiple=True, help="Extra tag (repeatable).")
@image_options
@click.option("--push", is_flag=True, help="Push to the registry and report digests.")
@click.option("--set", "overrides", multiple=True, help="Bake override, e.g. runtime.args.BATCH=1,2,4.")
@json_option()
def build(
    model: Path | None,
    named_models: tuple[str, ...],
    models_file: Path | None,
    pipelines: Path | None,
    precision: str,
    calibration: Path | None,
    version: str,
    tags: tuple[str, ...],
    registry: str,
    image_prefix: str,
    l4t_base: str | None,
    converter_base: str | None,
    runtime_python: str,
    platforms: str,
    push: bool,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Build both images for MODEL (a .pt/.onnx file or a bundle directory), or for several models
    (--model NAME=PATH ..., or --models models.yaml), each in its own last layer."""
    models = model_set(named_models, models_file, pipelines, precision, calibration)
    if (model is None) == (models is None):
        raise click.UsageError("Give MODEL, or several models with --model NAME=PATH or --models FILE.")
    cal = calibration_name(model, calibration) if model is not None else ""
    model = model.resolve() if model is not None else None
    result = build_images(
        model_dir=model.parent if model is not None else None,
        model=model.name if model is not None else "",
        models=models,
        precision=precision,
        calibration=cal,
        version=version,
        registry=registry,
        image_prefix=image_prefix,
        l4t_base=l4t_base,
        converter_base=converter_base,
        runtime_python=runtime_python,
        runtime_platforms=platforms,
        tags=tags,
        push=push,
        overrides=overrides,
        progress="quiet" if as_json else "auto",
        on_step=lambda s: click.echo(f"image build: {s}", err=True),
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"bundle sha256 {result.bundle_sha256} ({result.precision})")
    for m in result.models:
        click.echo(f"  model {m['name']:<16} {m['bundle_sha256'][:16]}  ({m['precision']})")
    for name, img in result.images.items():
        digest = img.digest or "(not pushed)"
        size = f"{img.size_bytes / 1e6:.1f} MB" if img.size_bytes else ""
        click.echo(f"{name:10} {img.tags[0] if img.tags else ''}  {digest}  {size}")
