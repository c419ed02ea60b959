"""``edge-runtime tune``: nvpmodel / jetson_clocks / CPU pinning, or the exact commands where absent."""

from __future__ import annotations

import json

import click

from edge_runtime.cli.options import json_option


@click.command()
@click.option("--power-mode", type=int, default=None, help="nvpmodel mode (0 = MAXN on Orin).")
@click.option("--max-clocks", is_flag=True, help="Run jetson_clocks (pin clocks at maximum).")
@click.option("--cpus", default=None, help="CPU list for the service, e.g. 2-5.")
@click.option(
    "--pid", type=int, default=None, help="Pin this running process instead of printing the command."
)
@click.option("--dry-run", is_flag=True, help="Only show the commands.")
@json_option
def tune(
    power_mode: int | None, max_clocks: bool, cpus: str | None, pid: int | None, dry_run: bool, as_json: bool
) -> None:
    """Apply real-time tuning where the Jetson tools exist; otherwise print the exact commands."""
    from edge_runtime.tune import apply, parse_cpus, plan

    steps = apply(plan(power_mode, max_clocks, parse_cpus(cpus) if cpus else None, pid), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in steps], indent=2))
        return
    for s in steps:
        if s.ran:
            click.echo(f"ran: {s.shell}  ({s.what})")
        elif dry_run or not s.runnable:
            click.echo(f"would run: {s.shell}  ({s.what})")
        else:
            click.echo(f"not on this machine, run on the robot: sudo {s.shell}  ({s.what})")
