"""Which tags a release gets, following docker/metadata-action's ``type=semver`` rules.

metadata-action with ``{{version}}``, ``{{major}}.{{minor}}``, ``{{major}}``, ``type=sha`` (``sha-`` + 7 hex
digits) and ``latest=auto``: a pre-release gets only ``{{version}}`` (its docs: pre-releases "will only
extend {{version}} as tag"). Unlike the action, which sees one git ref at a time, we know every release
already made, so a floating tag (``X.Y``, ``X``, ``latest``) moves only when the new version is the highest
stable one in its range: releasing 0.1.5 after 0.2.0 must not pull ``latest`` or ``0`` back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import semver

from edge_runtime.errors import EdgeError

CHANNELS = ("stable", "beta")
SHA_LENGTH = 7  # metadata-action's default short sha


class VersionError(EdgeError):
    """A release version is not a semantic version."""


def parse_version(text: str) -> semver.Version:
    """Parse ``X.Y.Z[-pre][+build]`` (a leading ``v`` is accepted, as metadata-action does)."""
    raw = text[1:] if text[:1] in ("v", "V") else text
    try:
        return semver.Version.parse(raw)
    except (ValueError, TypeError):
        raise VersionError(f"Version {text!r} is not a semantic version like 1.2.3 or 1.3.0-rc.1.") from None


def check_version(text: object) -> str:
    """``text`` itself when it is a semantic version in canonical spelling (no ``v``), else VersionError.
    Versions become file and directory names (``releases/<VERSION>.json`` here, ``releases/<VERSION>/`` on
    a robot), so this one check runs wherever a version comes in: manifests, rollout and rollback
    arguments, the state a robot reports."""
    if isinstance(text, str) and text[:1] not in ("", "v", "V"):
        try:
            if str(semver.Version.parse(text)) == text:
                return text
        except (ValueError, TypeError):
            pass
    raise VersionError(f"Version {text!r} is not a semantic version like 1.2.3 or 1.3.0-rc.1.")


def normalize_version(text: str) -> str:
    """The canonical spelling used for tags, file names and git tags (without ``v``)."""
    return str(parse_version(text))


def is_prerelease(version: str) -> bool:
    return parse_version(version).prerelease is not None


def default_channel(version: str) -> str:
    """Pre-releases go to ``beta``, the rest to ``stable``; ``promote`` moves them later."""
    return "beta" if is_prerelease(version) else "stable"


def check_channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise VersionError(f"Channel {channel!r} is not one of {', '.join(CHANNELS)}.")
    return channel


@dataclass
class TagPlan:
    """Tags a release gets; ``fixed`` never move again, ``floating`` move to the newest fitting release."""

    version: str
    fixed: list[str] = field(default_factory=list)
    floating: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.fixed, *self.floating]


def compute_tags(
    version: str, *, released: Iterable[str] = (), git_sha: str | None = None, channel: str | None = None
) -> TagPlan:
    """Tags for ``version`` given the versions ``released`` before it (the new one may be among them)."""
    v = parse_version(version)
    # OCI tags cannot hold "+": build metadata is spelled with "-" there (metadata-action does the same).
    plan = TagPlan(version=str(v), fixed=[str(v).replace("+", "-")])
    if git_sha and git_sha != "unknown":
        plan.fixed.append(f"sha-{git_sha[:SHA_LENGTH]}")
    if v.prerelease is None:
        stable = [p for p in (parse_version(r) for r in released) if p.prerelease is None]
        # build metadata does not order versions (semver §10); compare without it.
        core = v.replace(build=None)

        def highest(among: list[semver.Version]) -> bool:
            return all(core >= p.replace(build=None) for p in among)

        if highest([p for p in stable if (p.major, p.minor) == (v.major, v.minor)]):
            plan.floating.append(f"{v.major}.{v.minor}")
        if highest([p for p in stable if p.major == v.major]):
            plan.floating.append(f"{v.major}")
        if highest(stable):
            plan.floating.append("latest")
    if channel is not None:
        plan.floating.append(check_channel(channel))
    return plan
