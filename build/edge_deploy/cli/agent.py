"""``edge-deploy agent``: the robot's side of pull mode (``run``: follow the robot's channel and apply its
releases; ``check``: read and verify the channel once, change nothing)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from edge_runtime.cli.app import configure_logging

AGENT_MODULES = ("yaml", "semver", "asyncssh", "tenacity", "httpx", "cryptography", "prometheus_client")
CONFIG_HELP = "The agent's YAML configuration (robot, repository, channel, public_key, …; docs/fleet.md)."


def _need_agent_extra() -> None:
    """One sentence naming the extra when a package of ``[agent]`` is missing (a robot installs only it)."""
    import importlib.util

    from edge_deploy.fleet import FleetError

    missing = [m for m in AGENT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise FleetError(
            f"the agent needs {', '.join(missing)}, which come with the agent extra: "
            "pip install 'edge-deploy[agent]'."
        )


@click.group("agent")
def agent() -> None:
    """The robot agent of pull mode: follows a signed channel and applies its releases on this robot."""


@agent.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
@click.option("--once", is_flag=True, help="One check of the channel (and its update), then exit.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def run(config_file: Path, once: bool, quiet: bool) -> None:
    """Poll the channel with jitter and backoff, verify it, apply its release through the deploy state
    machine, report to the pushgateway. Each check prints one JSON line on stdout. With --once the exit
    status says how the check went: 0 (applied, already current, or not for this robot yet), 1 (the update
    failed or was rolled back), 2 (the channel was refused), 3 (the channel could not be read)."""
    _need_agent_extra()
    from edge_deploy.agent.config import load_config
    from edge_deploy.agent.loop import OFFLINE, Agent
    from edge_deploy.fleet.outcome import FAILURES

    configure_logging(0 if quiet else 1)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per registry request otherwise
    config = load_config(config_file)
    runner = Agent(config)
    if once:
        res = asyncio.run(runner.check_once())
        click.echo(json.dumps(res.to_dict()))
        if res.action == OFFLINE:
            raise SystemExit(3)
        if res.action == "refused":
            raise SystemExit(2)
        if res.outcome in FAILURES:
            raise SystemExit(1)
        return

    async def forever() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runner.run(stop, on_check=lambda r: click.echo(json.dumps(r.to_dict()), nl=True))

    asyncio.run(forever())


@agent.command("check")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
def check(config_file: Path) -> None:
    """Read and verify this robot's channel (signature, every image's signature and digests) and say
    whether its release is for this robot; changes nothing."""
    _need_agent_extra()
    from edge_deploy.agent.config import load_config
    from edge_deploy.release.channel import bucket, read_channel

    config = load_config(config_file)
    ch = read_channel(config.repository, config.channel, config.public_key, platform=config.robot.platform)
    b = bucket(config.robot.name)
    click.echo(
        json.dumps(
            {
                "robot": config.robot.name,
                "channel": ch.name,
                "version": ch.version,
                "percent": ch.percent,
                "bucket": b,
                "for_this_robot": b < ch.percent,
                "digest": ch.digest,
                "runtime": ch.manifest.runtime.ref,
            }
        )
    )
