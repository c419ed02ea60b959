"""``edge-deploy release create | list | show | verify | promote`` (``release VERSION`` is ``release create
VERSION``): argument parsing and output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import click

from edge_deploy.cli.image import model_set
from edge_deploy.cli.options import (
    calibration_name,
    image_options,
    json_option,
    public_key_option,
    releases_dir_option,
    sign_key_option,
    signing_key_option,
)
from edge_deploy.images.models import is_named_model
from edge_deploy.release.manifest import REQUIRED_BACKENDS, ReleaseError, load_release
from edge_deploy.release.release import IMAGES, Release, ReleaseOptions, sorted_releases
from edge_deploy.release.tags import CHANNELS, normalize_version
from edge_runtime.cli.app import OrderedGroup


def _repo_root() -> Path:
    proc = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], text=True, capture_output=True, check=False
    )
    return Path(proc.stdout.strip()) if proc.returncode == 0 else Path.cwd()


def _release(releases_dir: Path | None) -> Release:
    return Release(
        _repo_root(), releases_dir=releases_dir, on_step=lambda s: click.echo(f"release: {s}", err=True)
    )


REPO_RELEASES = releases_dir_option(
    "Where release manifests (<VERSION>.json) live [default: <repo>/releases]."
)


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


class VersionGroup(OrderedGroup):
    """A group where anything that is not a sub-command's name is a VERSION to release (``create``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        helping = any(a in ("-h", "--help") for a in args) and not any(not a.startswith("-") for a in args)
        if args and not helping and not any(a in self.commands for a in args):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@click.group(cls=VersionGroup)
def release() -> None:
    """Create, list, show, verify and promote releases.

    `edge-deploy release VERSION [OPTIONS]` is `edge-deploy release create VERSION [OPTIONS]`
    (see `edge-deploy release create --help`).
    """


@release.command("create")
@click.argument("version")
@click.option(
    "--model",
    "model_values",
    multiple=True,
    metavar="PATH | NAME=PATH",
    help="Model to bake into the runtime image (.pt/.onnx file or bundle directory); or, repeated as "
    "NAME=PATH, several models, each its own last layer at /opt/edge/models/NAME/.",
)
@click.option(
    "--models",
    "models_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A models.yaml of several models (name, path, precision, calibration, batch, inputs; pipelines).",
)
@click.option(
    "--pipelines",
    type=click.Path(path_type=Path),
    default=None,
    help="A pipelines.json for the models given with --model NAME=PATH (docs/runtime.md).",
)
@click.option(
    "--channel",
    type=click.Choice(CHANNELS),
    default=None,
    help="Channel tag [default: beta for pre-releases, stable otherwise].",
)
@click.option(
    "--push/--no-push",
    default=True,
    show_default=True,
    help="--no-push: checks, tag plan and a local build only.",
)
@click.option("--force", is_flag=True, help="Redo an existing version, or release from a dirty tree.")
@image_options
@signing_key_option()
@click.option("--no-sign", is_flag=True, help="Release without signatures (verify will then fail).")
@click.option(
    "--provenance/--no-provenance",
    default=True,
    show_default=True,
    help="buildx provenance attestation (mode=max).",
)
@click.option("--sbom", is_flag=True, help="buildx SBOM attestation (needs the syft scanner image).")
@click.option(
    "--reuse",
    multiple=True,
    metavar="NAME=REPO@DIGEST",
    help="Release already pushed images instead of building (both converter and runtime).",
)
@click.option(
    "--required-backend",
    type=click.Choice(REQUIRED_BACKENDS),
    default=None,
    help="What robots must serve this release with: tensorrt (every robot, even gpu: false ones), or any "
    "(ONNX Runtime on the CPU accepted everywhere, on purpose) [default: each robot's gpu and "
    "allow_cpu_fallback in fleet.yaml decide].",
)
@REPO_RELEASES
@click.option(
    "--git-tag/--no-git-tag",
    default=True,
    show_default=True,
    help="Create the annotated git tag vVERSION (off for trial releases such as the quickstart).",
)
@json_option("Print the manifest as JSON.")
def create(
    version: str,
    model_values: tuple[str, ...],
    models_file: Path | None,
    pipelines: Path | None,
    precision: str,
    calibration: Path | None,
    channel: str | None,
    push: bool,
    force: bool,
    registry: str,
    image_prefix: str,
    l4t_base: str | None,
    converter_base: str | None,
    runtime_python: str,
    platforms: str,
    key: Path | str | None,
    no_sign: bool,
    provenance: bool,
    sbom: bool,
    reuse: tuple[str, ...],
    required_backend: str | None,
    releases_dir: Path | None,
    git_tag: bool,
    as_json: bool,
) -> None:
    """Release VERSION: build + push both images, sign the digests, move tags, write the manifest."""
    reused: dict[str, str] = {}
    for item in reuse:
        name, sep, ref = item.partition("=")
        if not sep or name not in IMAGES:
            raise click.UsageError(
                f"--reuse {item!r} is not NAME=REPO@DIGEST with NAME in {', '.join(IMAGES)}."
            )
        reused[name] = ref
    if push and key is None and not no_sign:
        raise click.UsageError("No signing key: pass --key (or set EDGE_COSIGN_KEY), or --no-sign.")
    named = tuple(v for v in model_values if is_named_model(v))
    if named and len(named) != len(model_values):
        raise click.UsageError("--model takes one PATH, or NAME=PATH for each of several models, not both.")
    if len(model_values) > 1 and not named:
        raise click.UsageError("Several models need a name each: --model NAME=PATH.")
    model = Path(model_values[0]) if model_values and not named else None
    models = model_set(named, models_file, pipelines, precision, calibration)
    if calibration is not None and model is None and models is None:
        raise click.UsageError("--calibration needs --model (it must sit in the model's directory).")
    cal = calibration_name(model, calibration) if model is not None else ""
    model = model.resolve() if model is not None else None
    opts = ReleaseOptions(
        version=version,
        model_dir=model.parent if model else None,
        model=model.name if model else "policy.pt",
        models=models,
        precision=precision,
        calibration=cal,
        channel=channel,
        push=push,
        force=force,
        registry=registry,
        image_prefix=image_prefix,
        l4t_base=l4t_base,
        converter_base=converter_base,
        runtime_python=runtime_python,
        runtime_platforms=platforms,
        key=None if no_sign else key,
        provenance=provenance,
        sbom=sbom,
        reuse=reused,
        git_tag=git_tag,
        required_backend=required_backend,
    )
    rel = _release(releases_dir)
    if not push:
        plan = rel.dry_run(opts)
        _emit(plan, as_json, f"{plan['version']} (not pushed): tags {', '.join(plan['tags'])}")
        return
    manifest = rel.create(opts)
    lines = [f"released {manifest.version} ({manifest.git_sha[:12]}), pushed {manifest.pushed_bytes} bytes"]
    lines += [f"  {n}: {img.ref}  tags {', '.join(img.tags)}" for n, img in manifest.images.items()]
    lines += [f"  model {m.name}: bundle {m.bundle_sha256[:16]} ({m.precision})" for m in manifest.models]
    _emit(manifest.to_dict(), as_json, "\n".join(lines))


@release.command("list")
@REPO_RELEASES
@json_option()
def list_(releases_dir: Path | None, as_json: bool) -> None:
    """Releases recorded in the repository, oldest version first."""
    rel = _release(releases_dir)
    found = sorted_releases(rel.releases_dir)
    rows = [
        {
            "version": m.version,
            "git_sha": m.git_sha,
            "created": m.created,
            "channels": m.channels,
            "runtime": m.runtime.ref,
        }
        for m in found
    ]
    text = (
        "\n".join(
            f"{r['version']:<16} {r['created']}  {','.join(r['channels']) or '-':<12} {r['runtime']}"
            for r in rows
        )
        or "no releases"
    )
    _emit(rows, as_json, text)


@release.command("show")
@click.argument("version")
@REPO_RELEASES
def show(version: str, releases_dir: Path | None) -> None:
    """Print a release's manifest (JSON)."""
    rel = _release(releases_dir)
    click.echo(load_release(normalize_version(version), rel.releases_dir).to_json(), nl=False)


@release.command("verify")
@click.argument("version")
@public_key_option(
    "cosign public key (a file or env://VAR), or `keyless`: the signer's certificate identity and issuer "
    "then come from EDGE_COSIGN_IDENTITY (or EDGE_COSIGN_IDENTITY_REGEXP) and EDGE_COSIGN_OIDC_ISSUER.",
    default=Path("cosign.pub"),
    envvar="EDGE_COSIGN_PUB",
)
@REPO_RELEASES
@json_option()
def verify(version: str, public_key: Path, releases_dir: Path | None, as_json: bool) -> None:
    """Check that VERSION's tags still point at its recorded digests and that the signatures verify."""
    report = _release(releases_dir).verify(version, public_key)
    lines = [f"{n}: {r['ref']} signature ok" for n, r in report["images"].items()]
    _emit(report, as_json, "\n".join([f"release {report['version']} verified", *lines]))


@release.command("promote")
@click.argument("version")
@click.option(
    "--channel",
    required=True,
    metavar="NAME",
    help="The channel robots in pull mode follow (up to 64 of a-z 0-9 . _ -). stable and beta also "
    "move the images' tags of that name.",
)
@click.option(
    "--percent",
    type=int,
    default=100,
    show_default=True,
    help="Robots whose bucket is below it take the release (0-100).",
)
@sign_key_option("that signs the channel (password from COSIGN_PASSWORD).")
@public_key_option(
    "The fleet's cosign public key: the images' and the channel's signatures are checked with it, as "
    "robots will.",
    default=Path("cosign.pub"),
    envvar="EDGE_COSIGN_PUB",
)
@click.option(
    "--repository",
    default=None,
    help="Where the channel lives [default: the release's runtime repository].",
)
@click.option(
    "--allow-unsigned",
    multiple=True,
    metavar="IMAGE",
    help="Publish although IMAGE (converter, runtime…) has no signature the key verifies; robots that "
    "verify will refuse the channel (trials only).",
)
@click.option(
    "--tags-only",
    is_flag=True,
    help="Only move the images' stable/beta tags; publish no channel for pull mode (no key needed).",
)
@REPO_RELEASES
@json_option()
def promote(
    version: str,
    channel: str,
    percent: int,
    sign_key: str | None,
    public_key: Path,
    repository: str | None,
    allow_unsigned: tuple[str, ...],
    tags_only: bool,
    releases_dir: Path | None,
    as_json: bool,
) -> None:
    """Put VERSION on CHANNEL: publish the signed channel robots pull from (as `fleet rollout --mode pull`
    does for each wave), and for stable/beta re-tag the images by digest (no rebuild)."""
    from edge_deploy.release.channel import ChannelError, check_channel_name, check_percent, promote_channel

    try:
        check_channel_name(channel)
        check_percent(percent)
    except ChannelError as exc:
        raise click.UsageError(str(exc)) from None
    tag_channel = channel in CHANNELS
    if tags_only and not tag_channel:
        raise click.UsageError(
            f"--tags-only moves the images' {' or '.join(CHANNELS)} tags; {channel!r} is neither."
        )
    rel = _release(releases_dir)
    manifest = load_release(normalize_version(version), rel.releases_dir)
    result: dict[str, Any] = {"version": manifest.version, "channel": channel, "tags_moved": False}
    lines: list[str] = []
    if not tags_only:
        if not sign_key:
            raise click.UsageError(
                f"Channel {channel!r} is published signed: pass --sign-key (or set EDGE_COSIGN_KEY)"
                + (", or --tags-only." if tag_channel else ".")
            )
        done = promote_channel(
            manifest,
            channel,
            percent,
            sign_key,
            public_key,
            repository=repository,
            allow_unsigned=allow_unsigned,
        )
        result.update(done.to_dict())
        lines.append(
            f"channel {channel} ({done.repository}:{done.to_dict()['tag']}) → {done.version} at "
            f"{done.percent} %: {done.digest}"
        )
        if done.unsigned:
            lines.append(f"  unsigned, as asked: {', '.join(done.unsigned)} (verifying robots refuse it)")
    if tag_channel:
        manifest = rel.promote(version, channel)
        result["tags_moved"] = True
        lines.append(f"{manifest.version} is now on {channel}: {manifest.runtime.ref}")
    _emit(result, as_json, "\n".join(lines))


__all__ = ["ReleaseError", "promote", "release", "verify"]
