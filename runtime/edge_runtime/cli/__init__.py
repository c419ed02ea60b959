"""``edge-runtime``: the command that runs inside the robot's image."""

from __future__ import annotations

import sys

from edge_runtime import __version__
from edge_runtime.cli.app import lazy_cli, run

COMMANDS = {
    "serve": "edge_runtime.cli.serve:serve",
    "healthcheck": "edge_runtime.cli.healthcheck:healthcheck",
    "engine": "edge_runtime.cli.engine:engine",
    "probe": "edge_runtime.cli.probe:probe",
    "profile": "edge_runtime.cli.profile:profile",
    "tune": "edge_runtime.cli.tune:tune",
}


cli = lazy_cli(
    "edge-runtime",
    __version__,
    COMMANDS,
    "Run a model bundle on a Jetson: engine cache, inference service, device probes and tuning.",
)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, argv, prog_name="edge-runtime"))
