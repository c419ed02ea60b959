"""The fleet operations the CLI and the Python API call: ``deploy_release`` (a rollout in waves),
``rollback``, ``fleet_status``, ``fleet_infer`` and ``device_history``; and what a release must satisfy
before any robot is touched (an image pinned by digest, its signature, ROS 2 support)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import Progress, RobotReleases, on_robot
from edge_deploy.fleet.gate import infer
from edge_deploy.fleet.inventory import Fleet, Robot, load_fleet
from edge_deploy.fleet.options import DeployRequest, RollbackOptions, RolloutOptions, deploy_request
from edge_deploy.fleet.outcome import HistoryEntry, InferAnswer, RobotResult, RobotStatus
from edge_deploy.fleet.rollout import Rollout, RolloutResult
from edge_deploy.fleet.transport import check_transport, rollback_transport
from edge_deploy.release.manifest import (
    DEFAULT_RELEASES_DIR,
    ReleaseError,
    ReleaseManifest,
    list_releases,
    load_release,
    manifest_path,
)
from edge_deploy.release.tags import normalize_version

T = TypeVar("T")
log = logging.getLogger(__name__)

# repository@sha256:<hex> in the distribution reference grammar: it goes into each robot's .env, where
# compose would expand a "$" and a "#" would start a comment, so nothing outside that grammar passes.
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
)
DIGEST_REF = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*@sha256:[0-9a-f]{{64}}\Z")
SKIP_SIGNATURE = "insecure_skip_signature_check"


def verify_signature(ref: str, public_key: Path) -> None:
    """Verify the cosign signature of a digest-pinned image, on the host against the registry (robots
    need no cosign: they pull that same digest, and content addressing makes a re-tagged image another
    digest)."""
    from edge_deploy.release.signing import verify_image

    verify_image(ref, public_key)


def verify_release(
    manifest: ReleaseManifest, public_key: Path, releases_dir: Path, image_store: Path | None
) -> None:
    """``verify_signature`` of the release's image; a development release (``deploy``: no registry) is
    verified as the blob signature beside its record, over its manifest in the host's image store."""
    from edge_deploy.fleet.direct import is_local_release, verify_local_release

    if is_local_release(manifest):
        verify_local_release(manifest, releases_dir, image_store, public_key)
    else:
        verify_signature(manifest.runtime.ref, public_key)


def signature_policy(manifest: ReleaseManifest, key: Path | None, skip: bool) -> str:
    """What a rollout does about the image signature, in words for its summary; refuses (FleetError) when
    no public key is configured, signed release or not, unless the operator opted out on purpose: a fleet
    without ``public_key`` must not deploy unverified images silently."""
    if skip:
        return "not checked (--insecure-skip-signature-check)"
    if key is None:
        state = "is signed" if manifest.runtime.signature else "records no signature"
        raise FleetError(
            f"Release {manifest.version} {state} and no public key is configured to verify its image: pass "
            f"`public_key` (or set public_key in fleet.yaml), or deploy it unverified with `{SKIP_SIGNATURE}`.",
            option=("public_key", SKIP_SIGNATURE),
        )
    return f"verified with {key}"


def _load(fleet: Path | Fleet) -> Fleet:
    return fleet if isinstance(fleet, Fleet) else load_fleet(Path(fleet))


def known_images(releases_dir: Path) -> dict[str, tuple[str, str]]:
    """digest → (version, repository@digest) of every release manifest in ``releases_dir``: what names an
    image a robot runs when someone pinned it by hand. A manifest that does not load is left out (a status
    must not fail on one bad file)."""
    try:
        manifests = list_releases(releases_dir)
    except ReleaseError as exc:
        log.warning("Releases in %s: %s", releases_dir, exc)
        return {}
    out = {}
    for m in manifests:
        ref = m.runtime.ref
        if DIGEST_REF.match(ref):
            out[ref.partition("@")[2]] = (m.version, ref)
    return out


def deploy_release(
    fleet: Path | Fleet, options: RolloutOptions, progress: Progress | None = None
) -> RolloutResult:
    """Roll release ``options.version`` (``releases/<version>.json``) out to the fleet; see ``Rollout``.

    The image is deployed by digest only, and its signature is verified with the public key (option or
    ``public_key:`` in fleet.yaml) before any robot is touched; without a key the rollout is refused unless
    ``insecure_skip_signature_check`` (a dry run checks nothing)."""
    version = normalize_version(options.version)
    check_transport(options.transport)
    fl = _load(fleet)
    rdir = options.releases_dir or fl.releases_dir or DEFAULT_RELEASES_DIR
    manifest = load_release(version, rdir)
    image = manifest.runtime.ref
    if not DIGEST_REF.match(image):
        raise FleetError(
            f"Release {version} does not pin its runtime image by digest as repository@sha256:<64 hex digits> "
            f"({image!r}); refusing."
        )
    if options.include_ros2 and manifest.ros2 is False:
        raise FleetError(
            f"Release {version}'s runtime image cannot serve ROS 2 (no cyclonedds in its device "
            "dependencies; see docs/ros2.md); roll it out without `include_ros2`.",
            option="include_ros2",
        )
    key = options.public_key or fl.public_key
    robots = fl.select(group=options.group, devices=options.device_list)
    skip = options.insecure_skip_signature_check
    signature = "not checked (dry run)" if options.dry_run else signature_policy(manifest, key, skip)
    req = deploy_request(manifest, options, signed=signature.startswith("verified"), known=known_images(rdir))
    rollout = Rollout(robots, req, options, progress)
    if signature.startswith("verified"):
        assert key is not None
        verify_release(manifest, key, rdir, options.image_store)
    elif not options.dry_run:
        log.warning(
            "Release %s: the image signature of %s is not checked (%s).", version, image, SKIP_SIGNATURE
        )
    if options.transport == "ssh-copy" and not options.dry_run:  # the host holds the image for ssh-copy
        from edge_deploy.fleet.transport import prepare_store

        prepare_store(image, {r.platform for r in robots}, options.image_store)
    result = asyncio.run(rollout.run())
    result.signature = signature
    return result


def on_each(robots: Sequence[Robot], fn: Callable[[RobotReleases], Awaitable[T]]) -> list[T | RobotResult]:
    """``fn`` on each robot's releases, concurrently; connection problems become that robot's result."""

    async def each() -> list[T | RobotResult]:
        return list(await asyncio.gather(*(on_robot(r, "?", fn) for r in robots)))

    return asyncio.run(each())


def rollback(fleet: Path | Fleet, options: RollbackOptions) -> list[RobotResult]:
    """Put robots back on their previous (or the named) release from their own store: no download. A
    ``to`` release no longer kept on a robot is deployed there from its manifest (``releases_dir``), pulled
    and gated as a rollout, its signature checked first; without a manifest, the refusal names the command."""
    to = normalize_version(options.to) if options.to is not None else None  # a directory on each robot
    fl = _load(fleet)
    robots = fl.select(group=options.group, devices=options.device_list)
    rdir = options.releases_dir or fl.releases_dir or DEFAULT_RELEASES_DIR
    known = known_images(rdir)
    deploy: DeployRequest | None = None
    hint = ""
    if to is not None:
        if not manifest_path(to, rdir).is_file():
            hint = (
                f"; no releases/{to}.json in {rdir} to deploy it from: a rollout of {to} to this robot, with "
                "that release's manifest, does"
            )
        else:
            manifest = load_release(to, rdir)
            key = options.public_key or fl.public_key
            try:
                if not DIGEST_REF.match(manifest.runtime.ref):
                    raise FleetError(f"release {to} does not pin its runtime image by digest")
                signature = signature_policy(manifest, key, options.insecure_skip_signature_check)
            except FleetError as exc:  # only robots that no longer keep the release need its image
                hint = f"; deploying it is refused: {str(exc).rstrip('.')}"
            else:
                options = replace(  # registry, or ssh-copy from the host's store (fleet/transport.py)
                    options,
                    transport=rollback_transport(
                        manifest.runtime.ref,
                        {r.platform for r in robots},
                        options.transport,
                        options.image_store,
                    ),
                )
                deploy = deploy_request(
                    manifest, options, signed=signature.startswith("verified"), known=known
                )
                if key is not None and signature.startswith("verified"):  # on the host, before any robot
                    verify_release(manifest, key, rdir, options.image_store)
    timeout, smoke = options.health_timeout_s, options.smoke

    async def back(rr: RobotReleases) -> RobotResult:
        return await rr.rollback(
            to,
            timeout,
            smoke,
            deploy=deploy,
            not_kept_hint=hint,
            known=known,
            update_strategy=options.update_strategy,
        )

    return [r for r in on_each(robots, back)]


def fleet_status(
    fleet: Path | Fleet, *, group: str | None = None, devices: Sequence[str] | None = None
) -> list[RobotStatus]:
    """Each robot's recorded release, what really runs (a release pinned by hand, or an unknown image, is
    shown as drift), health and engine; an unreachable robot is a row with health "unreachable"."""
    fl = _load(fleet)
    robots = fl.select(group=group, devices=list(devices) if devices else None)
    known = known_images(fl.releases_dir or DEFAULT_RELEASES_DIR)

    async def status(rr: RobotReleases) -> RobotStatus:
        return await rr.status(known)

    return [
        RobotStatus(robot=o.robot, health="unreachable", reason=o.reason, version=None)
        if isinstance(o, RobotResult)
        else o
        for o in on_each(robots, status)
    ]


def fleet_infer(
    fleet: Path | Fleet,
    *,
    group: str | None = None,
    devices: Sequence[str] | None = None,
    payload: dict[str, object] | None = None,
    timeout: float = 120.0,
) -> list[InferAnswer]:
    """Send one inference to each robot's running release: ``payload`` (a ``/v1/infer`` body), or the smoke
    input each robot's model describes in its own metadata."""

    async def one(rr: RobotReleases) -> InferAnswer:
        state = await rr.read_state()
        head = InferAnswer(robot=rr.robot.name, version=state.get("current"))
        try:
            answer = await infer(rr.conn, payload, timeout)
        except Exception as exc:  # refused connection, forward errors, non-200 answers
            return {**head, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        return {**head, "ok": True, **answer}

    robots = _load(fleet).select(group=group, devices=list(devices) if devices else None)
    return [
        InferAnswer(robot=o.robot, ok=False, error=o.reason) if isinstance(o, RobotResult) else o
        for o in on_each(robots, one)
    ]


def device_history(fleet: Path | Fleet, device: str, limit: int = 50) -> list[HistoryEntry]:
    """The last ``limit`` entries of one robot's history, oldest first."""
    robot = _load(fleet).robot(device)

    async def history(rr: RobotReleases) -> list[HistoryEntry]:
        return await rr.history(limit)

    out = on_each([robot], history)[0]
    if isinstance(out, RobotResult):
        raise FleetError(out.reason)
    return out
