"""``edge-deploy fleet sim start | stop | list``: simulated robots (a real dockerd and sshd each) for tests and
the quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import json_option, registry_option
from edge_deploy.simulation import simulate as sim
from edge_runtime.cli.app import OrderedGroup

STATE_ROOT = click.option(
    "--state-root",
    type=click.Path(path_type=Path),
    default=sim.DEFAULT_STATE_ROOT,
    show_default=True,
    envvar="EDGE_FLEET_STATE",
    show_envvar=True,
    help="Where simulated fleets keep state.",
)


@click.group("sim", cls=OrderedGroup)
def sim_group() -> None:
    """Simulated robots (own dockerd and sshd each) for tests and the quickstart."""


@sim_group.command("start")
@click.option("--robots", "-n", type=click.IntRange(1, 50), default=2, show_default=True)
@click.option("--name", default="sim", show_default=True, help="Fleet name (state under the state root).")
@STATE_ROOT
@registry_option(sim.DEFAULT_REGISTRY, help="Registry the robots may pull from over plain HTTP.")
@click.option(
    "--platform",
    type=click.Choice(["linux/arm64", "linux/amd64"]),
    default="linux/arm64",
    show_default=True,
    help="Image platform the robots pull (arm64 runs under QEMU).",
)
@click.option("--no-engines", is_flag=True, help="Start only the SSH side (no dockerd per robot).")
@click.option(
    "--mode",
    type=click.Choice(["ssh", "pull"]),
    default="ssh",
    show_default=True,
    help="pull: also a site cache, a pushgateway, Prometheus and one agent per robot (with --key).",
)
@click.option("--channel", default="stable", show_default=True, help="Pull mode: the channel agents follow.")
@click.option(
    "--repository", help="Pull mode: the channel's repository (default REGISTRY/edge-deploy/runtime)."
)
@click.option(
    "--key",
    "public_key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Pull mode: the fleet's cosign public key; without it no agents start.",
)
@click.option("--poll-interval", type=click.FloatRange(0.5, 3600), default=5.0, show_default=True)
@click.option("--poll-jitter", type=click.FloatRange(0, 3600), default=2.0, show_default=True)
@json_option()
def start(
    robots: int,
    name: str,
    state_root: Path,
    registry: str,
    platform: str,
    no_engines: bool,
    mode: str,
    channel: str,
    repository: str | None,
    public_key: Path | None,
    poll_interval: float,
    poll_jitter: float,
    as_json: bool,
) -> None:
    """Start N simulated robots (own dockerd and sshd each) and write their fleet.yaml."""
    agents = None
    if mode == "pull" and public_key is not None:
        agents = {
            "repository": repository or f"{registry}/edge-deploy/runtime",
            "channel": channel,
            "public_key": public_key,
            "poll_interval_s": poll_interval,
            "poll_jitter_s": poll_jitter,
        }
    s = sim.simulate(
        robots,
        name,
        state_root=state_root,
        engines=not no_engines,
        registry=registry,
        platform=platform,
        mode=mode,
        agents=agents,
    )
    if as_json:
        click.echo(
            json.dumps(
                {"fleet_file": str(s.fleet_file), "robots": [r.name for r in s.robots], "pull": s.pull}
            )
        )
        return
    for r in s.robots:
        click.echo(f"{r.name}: ssh {r.user}@127.0.0.1:{r.ssh_port}, service port {r.service_port}")
    click.echo(f"fleet file: {s.fleet_file}")
    if s.pull:
        click.echo(
            f"site cache {s.pull['site_cache']}, pushgateway {s.pull['pushgateway']}, "
            f"Prometheus {s.pull['prometheus']}, agents: {'started' if agents else 'none (no --key)'}"
        )


@sim_group.command("stop")
@click.option("--name", default="sim", show_default=True)
@STATE_ROOT
@click.option("--purge", is_flag=True, help="Also delete the robots' users, image stores and state.")
def stop(name: str, state_root: Path, purge: bool) -> None:
    """Stop a simulated fleet's sshd and dockerd processes (by recorded PID)."""
    s = sim.Simulation.load(name, state_root)
    sim.stop(s, purge=purge)
    click.echo(f"stopped {len(s.robots)} robot(s) of {name}" + (" and removed their state" if purge else ""))


@sim_group.command("list")
@STATE_ROOT
@json_option()
def list_(state_root: Path, as_json: bool) -> None:
    """List simulated robots and whether their processes run."""
    rows = sim.list_simulations(state_root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no simulated fleets")
    for r in rows:
        up = "up" if r["sshd"] and r["dockerd"] else ("ssh only" if r["sshd"] else "down")
        click.echo(f"{r['fleet']:<10} {r['robot']:<16} {r['ssh']:<28} port {r['service_port']:<6} {up}")
