"""``python -m edge_deploy.agent run --config FILE [--once]``: the agent without the rest of the CLI."""

from __future__ import annotations

import sys

from edge_runtime.cli.app import run


def main(argv: list[str] | None = None) -> None:
    from edge_deploy.cli import EXTRAS
    from edge_deploy.cli.agent import agent

    sys.exit(run(agent, argv, prog_name="python -m edge_deploy.agent", extras=EXTRAS))


if __name__ == "__main__":
    main()
