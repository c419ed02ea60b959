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
@json_option()
def start(
    robots: int, name: str, state_root: Path, registry: str, platform: str, no_engines: bool, as_json: bool
) -> None:
    """Start N simulated robots (own dockerd and sshd each) and write their fleet.yaml."""
    s = sim.simulate(
        robots, name, state_root=state_root, engines=not no_engines, registry=registry, platform=platform
    )
    if as_json:
        click.echo(json.dumps({"fleet_file": str(s.fleet_file), "robots": [r.name for r in s.robots]}))
        return
    for r in s.robots:
        click.echo(f"{r.name}: ssh {r.user}@127.0.0.1:{r.ssh_port}, service port {r.service_port}")
    click.echo(f"fleet file: {s.fleet_file}")


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
