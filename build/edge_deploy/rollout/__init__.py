"""The Python API for rollouts: ``deploy_release`` (used by ``JetsonDeployment.deploy`` and the CLI),
``rollback``, ``fleet_status`` and ``device_history``. The work happens in ``edge_deploy.fleet``."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Fleet, Robot, load_fleet
from edge_deploy.fleet.robot import (
    DeployRequest,
    RobotReleases,
    RobotResult,
)
from edge_deploy.fleet.rollout import Progress, Rollout, RolloutResult, on_robot, plan_waves
from edge_deploy.release.manifest import (
    DEFAULT_RELEASES_DIR,
    ReleaseError,
    ReleaseManifest,
    list_releases,
    load_release,
    manifest_path,
)
from edge_deploy.release.tags import normalize_version

__all__ = [
    "RolloutResult",
    "deploy_release",
    "device_history",
    "fleet_infer",
    "fleet_status",
    "plan_waves",
    "rollback",
    "verify_signature",
]

# repository@sha256:<hex> in the distribution reference grammar: it goes into each robot's .env, where
# compose would expand a "$" and a "#" would start a comment, so nothing outside that grammar passes.
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
)
DIGEST_REF = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*@sha256:[0-9a-f]{{64}}\Z")
SKIP_SIGNATURE_FLAG = "--insecure-skip-signature-check"
log = logging.getLogger(__name__)


def verify_signature(ref: str, public_key: Path) -> None:
    """Verify the cosign signature of a digest-pinned image, on the host against the registry (robots
    need no cosign: they pull that same digest, and content addressing makes a re-tagged image another
    digest)."""
    from edge_deploy.release.signing import verify_image

    verify_image(ref, public_key)


def signature_policy(manifest: ReleaseManifest, key: Path | None, skip: bool) -> str:
    """What a rollout does about the image signature, in words for its summary; refuses (FleetError) when
    no public key is configured, signed release or not, unless the operator opted out on purpose: a fleet
    without ``public_key`` must not deploy unverified images silently."""
    if skip:
        return f"not checked ({SKIP_SIGNATURE_FLAG})"
    if key is None:
        state = "is signed" if manifest.runtime.signature else "records no signature"
        raise FleetError(
            f"Release {manifest.version} {state} and no public key is configured to verify its image: pass "
            f"--key cosign.pub or set public_key in fleet.yaml, or deploy it unverified with "
            f"{SKIP_SIGNATURE_FLAG}."
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


def _release_request(
    manifest: ReleaseManifest,
    signature: str,
    *,
    health_timeout: float,
    known: dict[str, tuple[str, str]],
    **kw: Any,
) -> DeployRequest:
    """What a robot receives for ``manifest`` (rollout, or rollback to a release no longer kept)."""
    return DeployRequest(
        version=manifest.version,
        image=manifest.runtime.ref,
        health_timeout_s=health_timeout,
        required_backend=manifest.required_backend,
        known_images=known,
        release={
            "git_sha": manifest.git_sha,
            "bundle_sha256": manifest.bundle_sha256,
            "precision": manifest.precision,
            "signed": signature.startswith("verified"),
        },
        **kw,
    )


def deploy_release(
    version: str,
    fleet: Path | Fleet,
    *,
    group: str | None = None,
    devices: list[str] | None = None,
    include_ros2: bool = False,
    auto_start: bool = False,
    canary: int = 0,
    wave_size: int | None = None,
    wave_percent: float | None = None,
    max_failures: int = 0,
    health_timeout: float = 600.0,
    confirm_timeout: float = 300.0,
    dry_run: bool = False,
    releases_dir: Path | None = None,
    public_key: Path | None = None,
    force: bool = False,
    smoke: bool = True,
    prebuild: bool = True,
    ros_domain_id: int = 0,
    progress: Progress | None = None,
    insecure_skip_signature_check: bool = False,
) -> RolloutResult:
    """Roll release ``version`` (``releases/<version>.json``) out to the fleet; see ``Rollout``.

    The image is deployed by digest only, and its signature is verified with the public key (argument or
    ``public_key:`` in fleet.yaml) before any robot is touched; without a key the rollout is refused unless
    ``insecure_skip_signature_check`` (a dry run checks nothing)."""
    version = normalize_version(version)
    fl = _load(fleet)
    rdir = releases_dir or fl.releases_dir or DEFAULT_RELEASES_DIR
    manifest = load_release(version, rdir)
    image = manifest.runtime.ref
    if not DIGEST_REF.match(image):
        raise FleetError(
            f"Release {version} does not pin its runtime image by digest as repository@sha256:<64 hex digits> "
            f"({image!r}); refusing."
        )
    if include_ros2 and manifest.extra.get("ros2") is False:
        raise FleetError(
            f"Release {version}'s runtime image cannot serve ROS 2 (no cyclonedds in its device "
            "dependencies; see docs/ros2.md); roll it out without ROS 2."
        )
    key = public_key or fl.public_key
    robots = fl.select(group=group, devices=devices)
    skip = insecure_skip_signature_check
    signature = "not checked (dry run)" if dry_run else signature_policy(manifest, key, skip)
    req = _release_request(
        manifest,
        signature,
        health_timeout=health_timeout,
        known=known_images(rdir),
        include_ros2=include_ros2,
        auto_start=auto_start,
        smoke=smoke,
        prebuild=prebuild,
        force=force,
        ros_domain_id=ros_domain_id,
        confirm_timeout_s=confirm_timeout,
    )
    rollout = Rollout(
        robots,
        req,
        canary=canary,
        wave_size=wave_size,
        wave_percent=wave_percent,
        max_failures=max_failures,
        dry_run=dry_run,
        progress=progress,
    )
    if signature.startswith("verified"):
        assert key is not None
        verify_signature(image, key)
    elif not dry_run:
        log.warning(
            "Release %s: the image signature of %s is not checked (%s).", version, image, SKIP_SIGNATURE_FLAG
        )
    result = asyncio.run(rollout.run())
    result.signature = signature
    return result


async def _each(robots: list[Robot], fn: Any) -> list[Any]:
    return list(await asyncio.gather(*(on_robot(r, "?", fn) for r in robots)))


def rollback(
    fleet: Path | Fleet,
    *,
    to: str | None = None,
    devices: list[str] | None = None,
    group: str | None = None,
    health_timeout: float = 600.0,
    smoke: bool = True,
    releases_dir: Path | None = None,
    public_key: Path | None = None,
    insecure_skip_signature_check: bool = False,
) -> list[RobotResult]:
    """Put robots back on their previous (or the named) release from their own store: no download. A
    ``to`` release no longer kept on a robot is deployed there from its manifest (``releases_dir``), pulled
    and gated as a rollout, its signature checked first; without a manifest, the refusal names the command."""
    to = normalize_version(to) if to is not None else None  # it names a directory on each robot
    fl = _load(fleet)
    robots = fl.select(group=group, devices=devices)
    rdir = releases_dir or fl.releases_dir or DEFAULT_RELEASES_DIR
    known = known_images(rdir)
    deploy: DeployRequest | None = None
    hint = ""
    if to is not None:
        if not manifest_path(to, rdir).is_file():
            hint = (
                f"; no releases/{to}.json in {rdir} to deploy it from: `edge-deploy rollout {to} --fleet FLEET "
                "--device NAME` with that release's manifest does"
            )
        else:
            manifest = load_release(to, rdir)
            key = public_key or fl.public_key
            try:
                if not DIGEST_REF.match(manifest.runtime.ref):
                    raise FleetError(f"release {to} does not pin its runtime image by digest")
                signature = signature_policy(manifest, key, insecure_skip_signature_check)
            except FleetError as exc:  # only robots that no longer keep the release need its image
                hint = f"; deploying it is refused: {str(exc).rstrip('.')}"
            else:
                deploy = _release_request(
                    manifest,
                    signature,
                    health_timeout=health_timeout,
                    known=known,
                    smoke=smoke,
                    force=True,
                    action="rollback",
                )
                if key is not None and signature.startswith("verified"):
                    verify_signature(manifest.runtime.ref, key)  # on the host, before any robot

                async def run(rr: RobotReleases) -> RobotResult:
                    return await rr.rollback(to, health_timeout, smoke, deploy=deploy, known=known)

                return await_all(robots, run)
    return await_all(
        robots, lambda rr: rr.rollback(to, health_timeout, smoke, not_kept_hint=hint, known=known)
    )


def await_all(robots: list[Robot], fn: Any) -> list[Any]:
    """``fn`` on each robot's releases, concurrently; connection problems become that robot's result."""
    return asyncio.run(_each(robots, fn))


def fleet_status(
    fleet: Path | Fleet, *, group: str | None = None, devices: list[str] | None = None
) -> list[dict[str, Any]]:
    """Each robot's recorded release, what really runs (a release pinned by hand, or an unknown image, is
    shown as drift), health and engine."""
    fl = _load(fleet)
    robots = fl.select(group=group, devices=devices)
    known = known_images(fl.releases_dir or DEFAULT_RELEASES_DIR)
    out = asyncio.run(_each(robots, lambda rr: rr.status(known)))
    return [o.to_dict() | {"health": "unreachable"} if isinstance(o, RobotResult) else o for o in out]


def fleet_infer(
    fleet: Path | Fleet,
    *,
    group: str | None = None,
    devices: list[str] | None = None,
    payload: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Send one inference to each robot's running release: ``payload`` (a ``/v1/infer`` body), or the smoke
    input each robot's model describes in its own metadata."""

    async def one(rr: RobotReleases) -> dict[str, Any]:
        state = await rr.read_state()
        try:
            answer = await rr.infer(payload, timeout)
        except Exception as exc:  # refused connection, forward errors, non-200 answers
            return {
                "robot": rr.robot.name,
                "version": state.get("current"),
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:200],
            }
        return {"robot": rr.robot.name, "version": state.get("current"), "ok": True, **answer}

    robots = _load(fleet).select(group=group, devices=devices)
    out = asyncio.run(_each(robots, one))
    return [
        {"robot": o.robot, "ok": False, "error": o.reason} if isinstance(o, RobotResult) else o for o in out
    ]


def device_history(fleet: Path | Fleet, device: str, limit: int = 50) -> list[dict[str, Any]]:
    robot = _load(fleet).robot(device)
    out = asyncio.run(_each([robot], lambda rr: rr.history(limit)))[0]
    if isinstance(out, RobotResult):
        raise FleetError(out.reason)
    return list(out)
