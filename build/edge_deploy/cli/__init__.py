"""``edge-deploy``: the host-side command (model conversion, images, releases, rollouts)."""

from __future__ import annotations

import sys

from edge_deploy import __version__
from edge_runtime.cli.app import lazy_cli, run

COMMANDS = {
    # model pipeline
    "sample-model": "edge_deploy.cli.sample_model:sample_model",
    "convert": "edge_deploy.cli.convert:convert",
    "bench": "edge_deploy.cli.bench:bench",
    # host, images
    "host": "edge_deploy.cli.host:host",
    "image": "edge_deploy.cli.image:image",
    # releases
    "release": "edge_deploy.cli.release:release",
    "verify": "edge_deploy.cli.release:verify",
    "promote": "edge_deploy.cli.release:promote",
    # fleet
    "fleet": "edge_deploy.cli.fleet:fleet",
    "rollout": "edge_deploy.cli.rollout:rollout",
    "rollback": "edge_deploy.cli.rollout:rollback",
    "status": "edge_deploy.cli.rollout:status",
    "history": "edge_deploy.cli.rollout:history",
}


cli = lazy_cli(
    "edge-deploy",
    __version__,
    COMMANDS,
    "Build and release PyTorch policies to fleets of NVIDIA Jetson robots.",
)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, argv, prog_name="edge-deploy"))
