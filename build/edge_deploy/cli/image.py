"""``edge-deploy image build``: converter + runtime images through buildx bake; digests and sizes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import calibration_name, image_options, json_option
from edge_deploy.images import build_images


@click.group()
def image() -> None:
    """Build the x86 converter image and the L4T arm64 runtime image."""


@image.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--version", "version", default="dev", show_default=True, help="Image tag.")
@click.option("--tag", "tags", multiple=True, help="Extra tag (repeatable).")
@image_options
@click.option("--push", is_flag=True, help="Push to the registry and report digests.")
@click.option("--set", "overrides", multiple=True, help="Bake override, e.g. runtime.args.BATCH=1,2,4.")
@json_option()
def build(
    model: Path,
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
    """Build both images for MODEL (a .pt/.onnx file or a bundle directory)."""
    cal = calibration_name(model, calibration)
    model = model.resolve()
    result = build_images(
        model_dir=model.parent,
        model=model.name,
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
    for name, img in result.images.items():
        digest = img.digest or "(not pushed)"
        size = f"{img.size_bytes / 1e6:.1f} MB" if img.size_bytes else ""
        click.echo(f"{name:10} {img.tags[0] if img.tags else ''}  {digest}  {size}")
