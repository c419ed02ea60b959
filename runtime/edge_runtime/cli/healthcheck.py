"""``edge-runtime healthcheck``: Docker's HEALTHCHECK; stdlib only so it starts in milliseconds."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import click


@click.command()
@click.option("--url", envvar="EDGE_HEALTH_URL", default=None,
              help="Service URL [env EDGE_HEALTH_URL; default http://127.0.0.1:$EDGE_PORT, port 8080].")
@click.option("--timeout", type=float, default=3.0, show_default=True)
@click.option("--live", is_flag=True, help="Check /healthz (alive) instead of /readyz (engine loaded).")
def healthcheck(url: str | None, timeout: float, live: bool) -> None:
    """Exit 0 when the service is ready (GET /readyz is 200), 1 otherwise."""
    url = url or f"http://127.0.0.1:{os.environ.get('EDGE_PORT') or 8080}"
    target = url.rstrip("/") + ("/healthz" if live else "/readyz")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            ok = resp.status == 200
            detail = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        ok, detail = False, f"unreachable ({getattr(exc, 'reason', exc)})"
    click.echo(f"{target}: {detail}", err=not ok)
    sys.exit(0 if ok else 1)
