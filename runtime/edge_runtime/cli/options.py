"""Options that several ``edge-runtime`` commands take, defined once so names, choices and EDGE_* variables
cannot drift between serve, engine build and profile (an engine built by one must hit the cache for the
other)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")

bundle_option = click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    envvar="EDGE_BUNDLE",
    required=True,
    help="Model bundle directory [env EDGE_BUNDLE].",
)


def model_source_options(bundle_help: str, models_help: str) -> Callable[[F], F]:
    """``--bundle`` and ``--models`` (both optional): one model bundle, or a repository of several, as
    ``serve`` and ``engine build`` take them; each command says in its help what it does with them."""

    def apply(f: F) -> F:
        f = click.option(
            "--models", type=click.Path(path_type=Path), envvar="EDGE_MODELS", default=None, help=models_help
        )(f)
        return click.option(
            "--bundle", type=click.Path(path_type=Path), envvar="EDGE_BUNDLE", default=None, help=bundle_help
        )(f)

    return apply


cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    envvar="EDGE_CACHE",
    required=True,
    help="Engine cache directory, a volume on the robot [env EDGE_CACHE].",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    envvar="EDGE_BACKEND",
    default="auto",
    show_default=True,
    help="auto: TensorRT where it imports and a GPU is present, else ONNX Runtime [env EDGE_BACKEND].",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    envvar="EDGE_PRECISION",
    default=None,
    help="Engine precision (default: the bundle's) [env EDGE_PRECISION].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
