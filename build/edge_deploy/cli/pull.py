"""Pull mode's options and output for ``fleet rollout | status | history`` (``--mode pull``): the channel
is published and signed here, and the fleet is read from telemetry (Prometheus or the pushgateway), not
over SSH. Kept apart so the SSH-mode commands stay as they are."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
MODES = ("push", "pull")


def mode_option() -> Callable[[F], F]:
    return click.option(
        "--mode",
        type=click.Choice(MODES),
        default="push",
        show_default=True,
        help="push: this host updates each robot of fleet.yaml over SSH; pull: robots' agents follow a signed "
        "channel and report to telemetry (docs/fleet.md, Pull mode).",
    )


def telemetry_options(f: F) -> F:
    """--prometheus / --pushgateway: where pull mode reads the fleet's reports."""
    f = click.option(
        "--pushgateway",
        envvar="EDGE_PUSHGATEWAY_URL",
        show_envvar=True,
        help="Pull mode without Prometheus: read the reports straight from the site's pushgateway.",
    )(f)
    return click.option(
        "--prometheus",
        envvar="EDGE_PROMETHEUS_URL",
        show_envvar=True,
        help="Pull mode: Prometheus's URL (http://HOST:9090), where the robots' reports are read.",
    )(f)


def channel_option(default: str | None = "stable") -> Callable[[F], F]:
    return click.option(
        "--channel",
        default=default,
        show_default=default is not None,
        help="Pull mode: the channel (tag channel-<name> in the fleet's repository).",
    )


def pull_rollout_options(f: F) -> F:
    """The options only a pull-mode rollout takes (``--mode`` and telemetry are added here too)."""
    for option in reversed(
        [
            mode_option(),
            channel_option(),
            click.option(
                "--repository",
                help="Pull mode: REGISTRY/repo that holds the channel [default: the release's runtime repository].",
            ),
            click.option(
                "--sign-key",
                envvar="EDGE_COSIGN_KEY",
                show_envvar=True,
                help="Pull mode: the fleet's cosign private key (a file or key reference; COSIGN_PASSWORD "
                "decrypts it): each channel change is signed with it.",
            ),
            click.option(
                "--wave-timeout",
                type=click.FloatRange(1),
                default=900,
                show_default=True,
                help="Pull mode: seconds a wave waits for its robots to report; a robot silent that long is "
                "offline (not a failure) and takes the release when it returns.",
            ),
        ]
    ):
        f = option(f)
    return telemetry_options(f)


def _telemetry(pull: Mapping[str, Any]) -> tuple[str | None, str | None]:
    prometheus, gateway = pull.get("prometheus"), pull.get("pushgateway")
    if bool(prometheus) == bool(gateway):
        raise click.UsageError(
            "--mode pull reads the fleet from telemetry: pass one of --prometheus or --pushgateway."
        )
    return prometheus, gateway


def _fleet_defaults(fleet_file: Path) -> tuple[Path | None, Path | None]:
    """public_key and releases_dir from fleet.yaml when there is one (pull mode needs no inventory)."""
    if not fleet_file.is_file():
        return None, None
    from edge_deploy.fleet.inventory import load_fleet

    fl = load_fleet(fleet_file)
    return fl.public_key, fl.releases_dir


def run_pull_rollout(params: Mapping[str, Any], progress: Callable[[str, str, str], None]) -> None:
    """``fleet rollout VERSION --mode pull``: publish the signed channel wave by wave, judge from telemetry.
    ``params``: the rollout command's parameters as click parsed them (push mode's among them, refused)."""
    from edge_deploy.cli.rollout import report_outcome
    from edge_deploy.fleet.pull import PullRolloutOptions, pull_rollout, wave_plan

    version: str = params["version"]
    wave_percent: tuple[float, ...] = params["wave_percent"]
    canary: int = params["canary"]
    max_failures: int = params["max_failures"]
    releases_dir: Path | None = params["releases_dir"]
    dry_run: bool = params["dry_run"]
    if params["group"] or params["devices"]:
        raise click.UsageError(
            "--group/--device pick robots of fleet.yaml; in --mode pull the channel's percentage does."
        )
    if params["wave_size"] is not None:
        raise click.UsageError("--wave-size counts robots of fleet.yaml; in --mode pull use --wave-percent.")
    if params["skip_signature"]:
        raise click.UsageError("--mode pull always signs the channel and verifies the release's images.")
    prometheus, gateway = _telemetry(params)
    fleet_key, fleet_releases = _fleet_defaults(params["fleet_file"])
    key = params["public_key"] or fleet_key
    if key is None:
        raise click.UsageError(
            "--mode pull needs the fleet's public key (--key or public_key: in fleet.yaml)."
        )
    if not params.get("sign_key") and not dry_run:
        raise click.UsageError("--mode pull signs each channel change: pass --sign-key (or EDGE_COSIGN_KEY).")
    if dry_run:
        steps = wave_plan(wave_percent, 0, [])
        click.echo(
            f"channel {params['channel']}: {' → '.join(f'{p} %' for p in steps)} (canary wave from telemetry)"
        )
        return
    opts = PullRolloutOptions(
        version=version,
        channel=params["channel"],
        repository=params.get("repository"),
        sign_key=params["sign_key"],
        public_key=key,
        releases_dir=releases_dir or fleet_releases or Path("releases"),
        wave_percents=wave_percent,
        canary=canary,
        max_failures=max_failures,
        prometheus=prometheus,
        pushgateway=gateway,
        wave_timeout_s=params["wave_timeout"],
    )
    result = pull_rollout(opts, progress)
    notes = [f"rollout stopped: {result.stop_reason}"] if result.stopped else []
    if result.reverted_to:
        notes.append(f"channel {result.channel} reverted to {result.reverted_to}")
    summary = result.to_dict()
    waves = ", ".join(f"{w['percent']} %" for w in result.waves)
    report_outcome(
        summary,
        result.ok,
        params["as_json"],
        f"pull rollout {version} on {result.channel}: {waves} ({result.seconds:.1f} s)",
        rows=[{**r, "timings": {}} for r in summary["robots"]],
        notes=notes,
    )


def run_pull_status(as_json: bool, pull: dict[str, Any], console: Any) -> None:
    """``fleet status --mode pull``: each robot's last report, from telemetry."""
    from rich import box
    from rich.table import Table

    from edge_deploy.fleet.pull import pull_status

    prometheus, gateway = _telemetry(pull)
    rows = pull_status(prometheus=prometheus, pushgateway=gateway, channel=pull.get("channel"))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="fleet status (pull mode, from telemetry)", box=box.SIMPLE_HEAD)
    for col in ("robot", "version", "health", "engine", "last", "channel", "bucket", "checked"):
        table.add_column(col, no_wrap=col in ("robot", "version", "health"))
    for r in rows:
        table.add_row(
            r["robot"],
            r["version"] or "-",
            "healthy" if r["healthy"] else "unhealthy",
            r["engine_state"] or "-",
            r["last_result"] or "-",
            r["channel"],
            str(r["bucket"]),
            f"{r['age_s']:.0f} s ago",
        )
    console.print(table)


def run_pull_history(device: str, hours: float, as_json: bool, pull: dict[str, Any]) -> None:
    """``fleet history --mode pull``: one robot's changes, from Prometheus's range queries."""
    from edge_deploy.fleet.pull import pull_history

    prometheus, _ = _telemetry(pull)
    if prometheus is None:
        raise click.UsageError(
            "History in --mode pull needs --prometheus: a pushgateway keeps only each robot's last report."
        )
    entries = pull_history(prometheus, device, hours)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        click.echo(
            f"{e['at']}  {e['channel']:<10} {e['version'] or '-':<12} {e['result'] or '-':<12} {e['engine_state']}"
        )
