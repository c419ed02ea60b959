"""Options that `image build` and `release create` both take, defined once: the same model, precision,
calibration, registry, bases and platforms mean the same thing (and are checked the same way, before any
work starts) whichever command builds the images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_deploy.images.build import DEFAULT_RUNTIME_PYTHON

F = TypeVar("F", bound=Callable[..., Any])

PLATFORMS = ("linux/arm64", "linux/amd64", "linux/arm64,linux/amd64")


def image_options(f: F) -> F:
    """--precision, --calibration, --registry, --prefix, --l4t-base, --converter-base, --runtime-python,
    --platform (in that order in --help)."""
    for option in reversed(
        [
            click.option(
                "--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True
            ),
            click.option(
                "--calibration",
                type=click.Path(path_type=Path),
                default=None,
                help="Calibration npz (int8); must sit in the model's directory (the build context).",
            ),
            click.option("--registry", envvar="EDGE_REGISTRY", default="localhost:5000", show_default=True),
            click.option("--prefix", "image_prefix", default="edge-deploy", show_default=True),
            click.option(
                "--l4t-base",
                envvar="EDGE_L4T_BASE",
                default=None,
                help="Runtime base image [env EDGE_L4T_BASE; default nvcr.io/nvidia/l4t-jetpack:r36.4.0].",
            ),
            click.option(
                "--converter-base",
                envvar="EDGE_CONVERTER_BASE",
                default=None,
                help="Converter base image [env EDGE_CONVERTER_BASE; default python:3.11-slim-bookworm].",
            ),
            click.option(
                "--runtime-python",
                envvar="EDGE_RUNTIME_PYTHON",
                default=DEFAULT_RUNTIME_PYTHON,
                show_default=True,
                help="Python version of the runtime base (3.10 on JetPack 6, 3.11 on our stand-in).",
            ),
            click.option(
                "--platform",
                "platforms",
                type=click.Choice(PLATFORMS),
                default="linux/arm64",
                show_default=True,
                help="Runtime platform(s) (amd64: x86 simulation hosts; both: one multi-platform index).",
            ),
        ]
    ):
        f = option(f)
    return f


def calibration_name(model: Path, calibration: Path | None) -> str:
    """The calibration file's name inside the model's directory ("" for none); a file elsewhere is refused
    (only the model's directory goes into the build context)."""
    if calibration is None:
        return ""
    calibration = calibration.resolve()
    if calibration.parent != model.resolve().parent:
        raise click.UsageError(
            "--calibration must be in the same directory as the model (the build context)."
        )
    return calibration.name
