"""``edge-deploy fleet rollout | rollback | status | history``: thin wrappers over ``edge_deploy.fleet``
(each command builds its operation's options object once and passes it down)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from edge_deploy.cli.options import (
    device_option,
    devices_option,
    fleet_option,
    group_option,
    json_option,
    public_key_option,
    releases_dir_option,
)
from edge_deploy.cli.pull import channel_option, mode_option, pull_rollout_options, telemetry_options

STYLE = {
    "updated": "green",
    "unchanged": "green",
    "planned": "cyan",
    "rolled_back": "yellow",
    "skipped": "yellow",
    "not_reached": "dim",
    "failed": "red",
    "refused": "red",
    "unreachable": "red",
}


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _progress_printer() -> Any:
    console = _console()
    t0 = time.monotonic()

    def progress(robot: str, step: str, detail: str) -> None:
        from rich.text import Text

        line = Text(f"[{time.monotonic() - t0:6.1f}s] {robot:<18} ")
        line.append(f"{step:<12}", style=STYLE.get(step, "bold"))
        line.append(f" {detail}".rstrip())
        console.print(line, soft_wrap=True)

    return progress


def _results_table(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("robot", "outcome", "total s", "reason"):
        table.add_column(col, no_wrap=col == "robot")
    for r in rows:
        from rich.text import Text

        table.add_row(
            r["robot"],
            Text(r["outcome"], style=STYLE.get(r["outcome"], "")),
            f"{r['timings'].get('total', 0):.1f}",
            Text(r["reason"][:160]),
        )
    _console(stderr=False).print(table)


def report_outcome(
    summary: dict[str, Any],
    ok: bool,
    as_json: bool,
    title: str,
    *,
    rows: list[dict[str, Any]] | None = None,
    lead: list[str] | None = None,
    notes: list[str] | None = None,
) -> None:
    """How a push or pull rollout ends: the summary as JSON, or ``lead`` lines, the robots' table and
    ``notes`` on stderr; exit status 1 when it did not succeed."""
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for line in lead or []:
            click.echo(line)
        _results_table(title, summary["robots"] if rows is None else rows)
        for note in notes or []:
            click.echo(note, err=True)
    if not ok:
        sys.exit(1)


@click.command()
@click.argument("version")
@fleet_option()
@group_option()
@devices_option()
@click.option(
    "--canary",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Robots in a first wave; any failure there stops the rollout.",
)
@click.option("--wave-size", type=click.IntRange(1), help="Robots per wave after the canary.")
@click.option(
    "--wave-percent",
    type=click.FloatRange(0, 100, min_open=True),
    multiple=True,
    help="Wave size as % of robots. Pull mode: the channel's percentage per wave (one value P: P, 2P, … "
    "100; several: those, then 100).",
)
@click.option(
    "--max-failures",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Stop after more failed robots than this; later waves stay untouched.",
)
@click.option(
    "--health-timeout",
    type=click.FloatRange(1),
    default=600,
    show_default=True,
    help="Seconds for the service to turn healthy (first start builds the engine).",
)
@click.option(
    "--confirm-timeout",
    type=click.FloatRange(1),
    default=300,
    show_default=True,
    help="Seconds each robot waits, once the new release is up, for this tool's health gate to confirm it; "
    "without a confirmation (a lost connection) the robot restores its previous release on its own.",
)
@releases_dir_option()
@public_key_option(
    "cosign public key; the image signature must verify (also `public_key:` in fleet.yaml). "
    "Without a key the rollout is refused.",
    must_exist=True,
)
@click.option(
    "--insecure-skip-signature-check",
    "skip_signature",
    is_flag=True,
    help="Deploy without verifying the image signature (no public key needed). Only for trusted test setups.",
)
@click.option("--ros2", "include_ros2", is_flag=True, help="Enable the ROS 2 bridge (compose.ros2.yaml).")
@click.option("--auto-start", is_flag=True, help="Install and enable the systemd unit on each robot.")
@click.option("--force", is_flag=True, help="Deploy even where the version is marked bad.")
@click.option(
    "--prebuild/--no-prebuild",
    default=True,
    show_default=True,
    help="Build the new engine on each robot before switching, while the running release serves "
    "(--no-prebuild: the new service builds it at start, e.g. where memory cannot hold both).",
)
@click.option("--dry-run", is_flag=True, help="Show the waves; touch no robot.")
@click.option(
    "--update-strategy",
    type=click.Choice(["hand-over", "stop-start"]),
    default=None,
    help="hand-over: the new release starts beside the running one, is gated on its own port and only "
    "then takes over (no downtime; needs memory for both); stop-start: the running one stops first "
    "[default: each robot's update_strategy in fleet.yaml].",
)
@click.option(
    "--transport",
    type=click.Choice(["registry", "ssh-copy"]),
    default="registry",
    show_default=True,
    help="How robots get the image: pull it from the release's registry, or ssh-copy: this host serves it "
    "over each robot's SSH connection, only the layers the robot lacks (robots with no registry access).",
)
@pull_rollout_options
@json_option("Print the summary as JSON on stdout.")
def rollout(
    version: str,
    fleet_file: Path,
    group: str | None,
    devices: tuple[str, ...],
    canary: int,
    wave_size: int | None,
    wave_percent: tuple[float, ...],
    max_failures: int,
    health_timeout: float,
    confirm_timeout: float,
    releases_dir: Path | None,
    public_key: Path | None,
    skip_signature: bool,
    include_ros2: bool,
    auto_start: bool,
    force: bool,
    prebuild: bool,
    dry_run: bool,
    transport: str,
    as_json: bool,
    update_strategy: str | None,
    **pull: Any,
) -> None:
    """Roll release VERSION out to the fleet in waves, with health gates and automatic rollback; with
    --mode pull, publish it on a signed channel wave by wave and judge the fleet from telemetry."""
    from edge_deploy.fleet import RolloutOptions, deploy_release

    # --- pull mode (robots' agents follow a signed channel): edge_deploy.cli.pull ---
    if pull.pop("mode") == "pull":
        from edge_deploy.cli.pull import run_pull_rollout

        run_pull_rollout(click.get_current_context().params, _progress_printer())
        return
    if len(wave_percent) > 1:
        raise click.UsageError("Several --wave-percent values are for --mode pull; push mode takes one.")

    if skip_signature and not dry_run:
        click.echo(
            f"warning: the image signature of release {version} will not be checked "
            "(--insecure-skip-signature-check).",
            err=True,
        )
    options = RolloutOptions(
        version=version,
        group=group,
        devices=devices,
        include_ros2=include_ros2,
        auto_start=auto_start,
        canary=canary,
        wave_size=wave_size,
        wave_percent=wave_percent[0] if wave_percent else None,
        max_failures=max_failures,
        health_timeout_s=health_timeout,
        confirm_timeout_s=confirm_timeout,
        dry_run=dry_run,
        releases_dir=releases_dir,
        public_key=public_key,
        force=force,
        prebuild=prebuild,
        insecure_skip_signature_check=skip_signature,
        transport=transport,
        update_strategy=update_strategy,
    )
    result = deploy_release(fleet_file, options, progress=None if dry_run else _progress_printer())
    report_outcome(
        result.to_dict(),
        result.ok,
        as_json,
        f"rollout {version} ({result.seconds:.1f} s)",
        lead=[f"wave {i}: {', '.join(wave)}" for i, wave in enumerate(result.waves, 1)] if dry_run else [],
        notes=[f"rollout stopped: {result.stop_reason}"] if result.stopped else [],
    )


@click.command()
@fleet_option()
@click.option("--to", "to", help="Release to go back to (default: each robot's previous release).")
@click.option(
    "--update-strategy",
    type=click.Choice(["hand-over", "stop-start"]),
    default=None,
    help="hand-over: the release goes back in beside the running one and takes over once gated; "
    "stop-start: the running one stops first [default: each robot's update_strategy in fleet.yaml].",
)
@devices_option()
@group_option()
@click.option("--health-timeout", type=click.FloatRange(1), default=600, show_default=True)
@releases_dir_option(
    "Where release manifests (<VERSION>.json) live: a --to release no longer kept is deployed from its "
    "manifest [default: `releases_dir:` in fleet.yaml, else ./releases]."
)
@public_key_option(
    "cosign public key for a --to release that must be deployed (also `public_key:`).", must_exist=True
)
@click.option(
    "--insecure-skip-signature-check",
    "skip_signature",
    is_flag=True,
    help="Deploy a --to release no longer kept without verifying its image signature.",
)
@click.option(
    "--transport",
    type=click.Choice(["registry", "ssh-copy"]),
    default=None,
    help="How a robot gets the image of a release it no longer keeps [default: ssh-copy when this host's "
    "image store holds it, else registry].",
)
@json_option()
def rollback(
    fleet_file: Path,
    to: str | None,
    devices: tuple[str, ...],
    group: str | None,
    health_timeout: float,
    releases_dir: Path | None,
    public_key: Path | None,
    skip_signature: bool,
    as_json: bool,
    update_strategy: str | None,
    transport: str | None,
) -> None:
    """Go back to a release kept on the robot (its previous one, or --to VERSION): nothing is downloaded.
    A --to release a robot no longer keeps is deployed there from its manifest, pulled and gated like a
    rollout."""
    from edge_deploy.fleet import RollbackOptions
    from edge_deploy.fleet import rollback as do_rollback

    options = RollbackOptions(
        to=to,
        devices=devices,
        group=group,
        health_timeout_s=health_timeout,
        releases_dir=releases_dir,
        public_key=public_key,
        insecure_skip_signature_check=skip_signature,
        update_strategy=update_strategy,
        transport=transport,
    )
    results = do_rollback(fleet_file, options)
    rows = [r.to_dict() for r in results]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _results_table("rollback", rows)
    if any(r.failed for r in results):
        sys.exit(1)


@click.command()
@fleet_option()
@group_option()
@devices_option()
@mode_option()
@channel_option(default=None)
@telemetry_options
@json_option()
def status(fleet_file: Path, group: str | None, devices: tuple[str, ...], as_json: bool, **pull: Any) -> None:
    """Version, digest, health, engine state and last result of each robot (--mode pull: as the robots
    last reported to telemetry)."""
    if pull.pop("mode") == "pull":  # pull mode: edge_deploy.cli.pull
        from edge_deploy.cli.pull import run_pull_status

        run_pull_status(as_json, pull, _console(stderr=False))
        return
    from rich import box
    from rich.table import Table

    from edge_deploy.fleet import fleet_status

    rows = fleet_status(fleet_file, group=group, devices=list(devices) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console = _console(stderr=False)
    # Robot, version and health are never cut; engine and last result wrap between words. The digest
    # (12 hex digits, as `docker images` shows them) is shown where the terminal has room for it (it is
    # always in --json and in `history`): on 80 columns the rest would be cut instead.
    cols = ["robot", "version", "health", "engine", "last"] + (["digest"] if console.width >= 100 else [])
    table = Table(title="fleet status", box=box.SIMPLE_HEAD)  # no vertical rules
    for col in cols:
        table.add_column(
            col, no_wrap=col in ("robot", "version", "health"), min_width={"engine": 11, "last": 11}.get(col)
        )
    for r in rows:
        engine: Any = r.get("engine")  # /readyz (a dict), shown as a short word
        if isinstance(engine, dict):
            startup = engine.get("startup") or {}
            cache = "" if "cache_hit" not in startup else (" cache hit" if startup["cache_hit"] else " built")
            engine = (
                f"{engine.get('backend', '')}{cache}".strip() or "ready"
                if engine.get("ready")
                else str(engine.get("error") or "not ready")[:40]
            )
        models = r.get("models")
        if isinstance(models, dict) and models:  # a release of several models: each one's state
            engine = f"{engine}; " + ", ".join(f"{name} {state}" for name, state in models.items())
        image = str(r.get("image") or "")
        version = str(r.get("version") or "-")
        if r.get("drift"):  # what runs is not what state.json records: say so, never cut
            version += f" (pinned by hand; recorded {r.get('recorded') or '-'})"
        cells = [
            r["robot"],
            version,
            str(r.get("health")),
            str(engine or "-"),
            str(r.get("last_result") or r.get("reason", "-"))[:60],
            image.split("@")[-1].removeprefix("sha256:")[:12],
        ]
        table.add_row(*cells[: len(cols)])
    console.print(table)


@click.command()
@fleet_option()
@device_option()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@mode_option()
@telemetry_options
@click.option(
    "--hours",
    type=click.FloatRange(0, 2160, min_open=True),
    default=24,
    show_default=True,
    help="Pull mode: how far back to read the robot's reports.",
)
@json_option()
def history(fleet_file: Path, device: str, limit: int, as_json: bool, hours: float, **pull: Any) -> None:
    """Deploys and rollbacks recorded on one robot, oldest first (--mode pull: the changes of its reports
    in Prometheus)."""
    if pull.pop("mode") == "pull":  # pull mode: edge_deploy.cli.pull
        from edge_deploy.cli.pull import run_pull_history

        run_pull_history(device, hours, as_json, pull)
        return
    from edge_deploy.fleet import device_history

    entries = device_history(fleet_file, device, limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        extra = e.get("reason") or (f"from {e['from']}" if e.get("from") else "")
        click.echo(
            f"{e.get('at', '?')}  {e.get('action', '?'):<14} {e.get('version', '?'):<12} "
            f"{e.get('result', '?'):<12} {extra}"
        )
