"""``edge-runtime``: the command that runs inside the robot's image."""

from __future__ import annotations

import sys

import click

from edge_runtime import __version__
from edge_runtime.cli.app import LazyGroup, configure_logging, run

COMMANDS = {
    "serve": "edge_runtime.cli.serve:serve",
    "healthcheck": "edge_runtime.cli.healthcheck:healthcheck",
    "engine": "edge_runtime.cli.engine:engine",
    "probe": "edge_runtime.cli.probe:probe",
    "profile": "edge_runtime.cli.profile:profile",
    "tune": "edge_runtime.cli.tune:tune",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-runtime")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
def cli(verbose: int) -> None:
    """Run a model bundle on a Jetson: engine cache, inference service, device probes and tuning."""
    configure_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, argv, prog_name="edge-runtime"))
