"""``edge-runtime healthcheck``: the image's health check, for people (Docker runs
``python3 -m edge_runtime.healthcheck``, which skips click)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option(
    "--url",
    envvar="EDGE_HEALTH_URL",
    default=None,
    help="Service URL [env EDGE_HEALTH_URL; default http://127.0.0.1:$EDGE_PORT, port 8080].",
)
@click.option("--timeout", type=float, default=3.0, show_default=True)
@click.option("--live", is_flag=True, help="Check /healthz (alive) instead of /readyz (engine loaded).")
def healthcheck(url: str | None, timeout: float, live: bool) -> None:
    """Exit 0 when the service is ready (GET /readyz is 200), 1 otherwise."""
    from edge_runtime.healthcheck import check

    ok, line = check(url, timeout, live)
    click.echo(line, err=not ok)
    sys.exit(0 if ok else 1)
