"""``edge-deploy site up | down | status``: a pull-through cache registry for the robots of one site."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import json_option
from edge_deploy.fleet import site as sites
from edge_runtime.cli.app import OrderedGroup

STATE_ROOT = click.option(
    "--state-root",
    type=click.Path(path_type=Path),
    default=sites.DEFAULT_STATE_ROOT,
    show_default=True,
    envvar="EDGE_SITE_STATE",
    show_envvar=True,
    help="Where site caches keep their config, log and blobs.",
)


@click.group("site", cls=OrderedGroup)
def site() -> None:
    """Site caches: a registry in proxy mode in front of the fleet's registry, one per site."""


@site.command("up")
@click.argument("name")
@click.option(
    "--upstream",
    required=True,
    help="The fleet registry's URL, e.g. https://registry.example.com or http://127.0.0.1:5000.",
)
@click.option(
    "--listen", default=sites.DEFAULT_LISTEN, show_default=True, help="HOST:PORT to serve robots on."
)
@click.option(
    "--public",
    "allow_public",
    is_flag=True,
    help="Allow a --listen address that is not loopback (the site's LAN).",
)
@click.option(
    "--upstream-username",
    envvar="EDGE_SITE_UPSTREAM_USERNAME",
    show_envvar=True,
    help="The user the cache logs in to a private upstream as (with --upstream-password-file).",
)
@click.option(
    "--upstream-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="EDGE_SITE_UPSTREAM_PASSWORD_FILE",
    show_envvar=True,
    help="A file holding the upstream password (never a command-line value: the process list shows those).",
)
@STATE_ROOT
@json_option()
def up(
    name: str,
    upstream: str,
    listen: str,
    allow_public: bool,
    upstream_username: str | None,
    upstream_password_file: Path | None,
    state_root: Path,
    as_json: bool,
) -> None:
    """Start (or restart) the site cache NAME; robots set ``site_cache: HOST:PORT`` to pull through it."""
    password = sites.read_password_file(upstream_password_file) if upstream_password_file else None
    s = sites.site_up(
        name,
        upstream,
        listen=listen,
        state_root=state_root,
        allow_public=allow_public,
        upstream_username=upstream_username,
        upstream_password=password,
    )
    if as_json:
        click.echo(json.dumps(sites.site_status(s)))
        return
    login = f" as {s.upstream_username}" if s.upstream_username else ""
    click.echo(
        f"site cache {s.name}: {s.listen} → {s.upstream}{login} (pid {s.pid}); robots: site_cache: {s.address}"
    )


@site.command("down")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the cached blobs and the site's record.")
@STATE_ROOT
def down(name: str, purge: bool, state_root: Path) -> None:
    """Stop the site cache NAME (by its recorded PID)."""
    s = sites.Site.load(name, state_root)
    sites.site_down(s, purge=purge)
    click.echo(f"stopped site cache {name}" + (" and removed its blobs" if purge else ""))


@site.command("status")
@click.argument("name", required=False)
@STATE_ROOT
@json_option()
def status(name: str | None, state_root: Path, as_json: bool) -> None:
    """Whether each site cache runs, what it holds and what it fetched from upstream."""
    chosen = [sites.Site.load(name, state_root)] if name else sites.list_sites(state_root)
    rows = [sites.site_status(s) for s in chosen]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no site caches")
    for r in rows:
        blobs = r["proxy"].get("blobs", {})
        state = "up" if r["answering"] else ("starting" if r["running"] else "down")
        click.echo(
            f"{r['name']:<12} {r['listen']:<22} {state:<8} upstream {r['upstream']}  cached {r['cached_bytes']} B"
            + (f"  hits {blobs.get('Hits', 0)} misses {blobs.get('Misses', 0)}" if blobs else "")
        )
