"""``edge-deploy image build``: converter + runtime images through buildx bake; digests and sizes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.images import DEFAULT_RUNTIME_PYTHON, build_images


@click.group()
def image() -> None:
    """Build the x86 converter image and the L4T arm64 runtime image."""


@image.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration npz (int8); must sit in the model's directory.")
@click.option("--version", "version", default="dev", show_default=True, help="Image tag.")
@click.option("--tag", "tags", multiple=True, help="Extra tag (repeatable).")
@click.option("--registry", envvar="EDGE_REGISTRY", default="localhost:5000", show_default=True)
@click.option("--prefix", "image_prefix", default="edge-deploy", show_default=True)
@click.option("--l4t-base", envvar="EDGE_L4T_BASE", default=None,
              help="Runtime base image [env EDGE_L4T_BASE; default nvcr.io/nvidia/l4t-jetpack:r36.4.0].")
@click.option("--converter-base", envvar="EDGE_CONVERTER_BASE", default=None,
              help="Converter base image [env EDGE_CONVERTER_BASE; default python:3.11-slim-bookworm].")
@click.option("--runtime-python", envvar="EDGE_RUNTIME_PYTHON", default=DEFAULT_RUNTIME_PYTHON, show_default=True,
              help="Python version of the runtime base (3.10 on JetPack 6, 3.11 on our stand-in).")
@click.option("--platform", "platforms", default="linux/arm64", show_default=True,
              type=click.Choice(["linux/arm64", "linux/amd64", "linux/arm64,linux/amd64"]),
              help="Runtime platform(s) (amd64: x86 simulation hosts; both: one multi-platform index).")
@click.option("--push", is_flag=True, help="Push to the registry and report digests.")
@click.option("--set", "overrides", multiple=True, help="Bake override, e.g. runtime.args.BATCH=1,2,4.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(model: Path, precision: str, calibration: Path | None, version: str, tags: tuple[str, ...],
          registry: str, image_prefix: str, l4t_base: str | None, converter_base: str | None,
          runtime_python: str, platforms: str, push: bool, overrides: tuple[str, ...], as_json: bool) -> None:
    """Build both images for MODEL (a .pt/.onnx file or a bundle directory)."""
    model = model.resolve()
    cal = ""
    if calibration is not None:
        calibration = calibration.resolve()
        if calibration.parent != model.parent:
            raise click.UsageError("--calibration must be in the same directory as MODEL (the build context).")
        cal = calibration.name
    result = build_images(
        model_dir=model.parent, model=model.name, precision=precision, calibration=cal, version=version,
        registry=registry, image_prefix=image_prefix, l4t_base=l4t_base, converter_base=converter_base,
        runtime_python=runtime_python, runtime_platforms=platforms, tags=tags, push=push, overrides=overrides,
        progress="quiet" if as_json else "auto",
        on_step=lambda s: click.echo(f"image build: {s}", err=True),
    )
    result.pop("results")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"bundle sha256 {result['bundle_sha256']} ({result['precision']})")
    for name, img in result["images"].items():
        digest = img["digest"] or "(not pushed)"
        size = f"{img['size_bytes'] / 1e6:.1f} MB" if img["size_bytes"] else ""
        click.echo(f"{name:10} {img['tags'][0] if img['tags'] else ''}  {digest}  {size}")
