"""``edge-deploy fleet``: start, stop and list a simulated fleet (real dockerd + sshd per robot)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.simulation import simulate as sim

STATE_ROOT = click.option(
    "--state-root",
    type=click.Path(path_type=Path),
    default=sim.DEFAULT_STATE_ROOT,
    show_default=True,
    envvar="EDGE_FLEET_STATE",
    help="Where simulated fleets keep state.",
)


@click.group()
def fleet() -> None:
    """Simulated fleets for tests and the quickstart."""


@fleet.command("simulate")
@click.option("--robots", "-n", type=click.IntRange(1, 50), default=2, show_default=True)
@click.option("--name", default="sim", show_default=True, help="Fleet name (state under the state root).")
@STATE_ROOT
@click.option(
    "--registry",
    default=sim.DEFAULT_REGISTRY,
    show_default=True,
    envvar="EDGE_REGISTRY",
    help="Registry the robots may pull from over plain HTTP.",
)
@click.option(
    "--platform",
    type=click.Choice(["linux/arm64", "linux/amd64"]),
    default="linux/arm64",
    show_default=True,
    help="Image platform the robots pull (arm64 runs under QEMU).",
)
@click.option("--no-engines", is_flag=True, help="Start only the SSH side (no dockerd per robot).")
@click.option("--json", "as_json", is_flag=True)
def simulate(
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


@fleet.command("stop")
@click.option("--name", default="sim", show_default=True)
@STATE_ROOT
@click.option("--purge", is_flag=True, help="Also delete the robots' users, image stores and state.")
def stop(name: str, state_root: Path, purge: bool) -> None:
    """Stop a simulated fleet's sshd and dockerd processes (by recorded PID)."""
    s = sim.Simulation.load(name, state_root)
    sim.stop(s, purge=purge)
    click.echo(f"stopped {len(s.robots)} robot(s) of {name}" + (" and removed their state" if purge else ""))


@fleet.command("list")
@STATE_ROOT
@click.option("--json", "as_json", is_flag=True)
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


@fleet.command("infer")
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(path_type=Path),
    default=Path("fleet.yaml"),
    show_default=True,
    envvar="EDGE_FLEET",
    help="Fleet inventory [env EDGE_FLEET].",
)
@click.option("--group", help="Only robots of this inventory group.")
@click.option("--device", "devices", multiple=True, help="Only this robot (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def infer(fleet_file: Path, group: str | None, devices: tuple[str, ...], as_json: bool) -> None:
    """Send one inference to each robot's running release over SSH (an input made from the served model's
    own metadata) and print its outputs."""
    import numpy as np

    from edge_deploy.rollout import fleet_infer

    rows = fleet_infer(fleet_file, group=group, devices=list(devices) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for r in rows if not as_json else []:
        if not r.get("ok"):
            click.echo(f"{r['robot']:<16} FAILED  {r.get('error')}")
            continue
        shown = []
        for name, value in r["outputs"].items():  # every output the robot's model gives, first 8 values
            flat = np.ravel(
                np.asarray(value.get("data", []) if isinstance(value, dict) else value, dtype=float)
            )
            shown.append(f"{name} {[round(v, 4) for v in flat[:8].tolist()]}{' …' if flat.size > 8 else ''}")
        click.echo(
            f"{r['robot']:<16} {r.get('version') or '-':<10} {'  '.join(shown)}  "
            f"({r['round_trip_ms']:.0f} ms round trip)"
        )
    if any(not r.get("ok") for r in rows):
        raise SystemExit(1)
