"""``edge-deploy deploy --to USER@HOST MODEL_OR_BUNDLE``: one model to one robot with no registry (a thin
wrapper over ``edge_deploy.fleet.direct``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge_deploy.cli.options import json_option, sign_key_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, help="The robot as USER@HOST (its SSH login and address).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="SSH port [default: 22].")
@click.option(
    "--key", "ssh_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="SSH key."
)
@click.option(
    "--known-hosts",
    type=click.Path(path_type=Path),
    default=None,
    help="known_hosts file holding the robot's host key [default: ~/.ssh/known_hosts]; an unknown or "
    "changed key is refused.",
)
@click.option("--jetson-model", default=None, help="The robot's Jetson module [default: orin_nano].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option(
    "--health-timeout",
    type=click.FloatRange(1),
    default=600,
    show_default=True,
    help="Seconds for the service to turn healthy.",
)
@click.option("--ros2", "include_ros2", is_flag=True, help="Enable the ROS 2 bridge (compose.ros2.yaml).")
@click.option("--auto-start", is_flag=True, help="Install and enable the systemd unit on the robot.")
@sign_key_option(
    "(a file or key reference; COSIGN_PASSWORD decrypts it): the release's image manifest is signed with "
    "it, the signature kept beside the local release record."
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="EDGE_COSIGN_PUB",
    show_envvar=True,
    default=None,
    help="cosign public key the release's signature must verify with before anything reaches the robot "
    "[default: `public_key:` of the fleet.yaml EDGE_FLEET names]; an unsigned release is then refused.",
)
@click.option(
    "--insecure-skip-signature-check",
    "skip_signature",
    is_flag=True,
    help="Deploy without verifying the signature even though a public key is configured.",
)
@json_option("Print the result as JSON on stdout.")
def deploy(
    model: Path,
    to: str,
    port: int | None,
    ssh_key: Path | None,
    known_hosts: Path | None,
    jetson_model: str | None,
    precision: str,
    health_timeout: float,
    include_ros2: bool,
    auto_start: bool,
    sign_key: str | None,
    public_key: Path | None,
    skip_signature: bool,
    as_json: bool,
) -> None:
    """Build MODEL (a model file or a model bundle) for one robot and deploy it there over SSH, no registry
    needed: only the image layers the robot lacks travel; health gate and automatic rollback as in rollouts.
    A robot listed in the fleet.yaml that EDGE_FLEET names takes that entry's settings first."""
    from edge_deploy.cli.rollout import _progress_printer, _results_table
    from edge_deploy.fleet.direct import deploy_direct, inventory_entry, parse_target, target_robot

    user, host = parse_target(to)
    given = {
        k: v
        for k, v in {
            "user": user,
            "port": port,
            "ssh_key": ssh_key,
            "known_hosts": known_hosts,
            "jetson_model": jetson_model,
        }.items()
        if v is not None
    }
    robot = target_robot(host, **{**inventory_entry(host, port, user), **given})
    say = _progress_printer()
    result = deploy_direct(
        model,
        robot,
        precision=precision,
        on_step=lambda step: say(robot.name, "build", step),
        health_timeout_s=health_timeout,
        include_ros2=include_ros2,
        auto_start=auto_start,
        sign_key=sign_key,
        public_key=public_key,
        insecure_skip_signature_check=skip_signature,
    )
    summary = result.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _results_table(f"deploy {result.version} ({result.seconds:.1f} s)", summary["robots"])
        moved = summary["robots"][0].get("image_bytes") if summary["robots"] else None
        if moved is not None:
            click.echo(f"image bytes sent over SSH: {moved}", err=True)
    if not result.ok:
        sys.exit(1)
