"""Options that several ``edge-runtime`` commands take, defined once so names, choices and EDGE_* variables
cannot drift between serve, engine build and profile (an engine built by one must hit the cache for the
other)."""

from __future__ import annotations

from pathlib import Path

import click

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")

bundle_option = click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    envvar="EDGE_BUNDLE",
    required=True,
    help="Model bundle directory [env EDGE_BUNDLE].",
)
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
