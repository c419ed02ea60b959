"""Release channels in the registry, for robots that pull: a channel is a small OCI artifact (tag
``channel-<name>`` in the fleet's repository) holding the release manifest and a rollout ``percent``,
signed with the fleet's cosign key like the images are.

The operator publishes with ``publish_channel`` (registry HTTP API for the artifact, the cosign binary for
the signature, as every other signature of a release is made). A robot reads with ``read_channel``, which
verifies in Python (``cryptography``), without cosign: the robot's agent then needs no Go binary and no
transparency log, and checks cosign's key-based formats. cosign 2: the signature manifest under tag
``sha256-<hex>.sig``, each layer a simple-signing payload whose ``docker-manifest-digest`` must be the
digest read, and whose ``dev.cosignproject.cosign/signature`` annotation must verify over the payload's
bytes with the fleet's public key (ECDSA P-256 / SHA-256 for cosign's own keys). cosign 3: a Sigstore
bundle among the digest's OCI referrers (the referrers API, or the referrers tag ``sha256-<hex>`` on a
registry without it), whose DSSE signature must verify and whose in-toto statement must name the digest
(``sigstore_bundle``). The channel's artifact and every image of its release are checked that way, and each
image's index must still be the bytes of its digest and list the platform digests the release recorded.
Anything unsigned, signed with another key or mismatched is refused with one sentence. What a registry
answers is read up to MAX_DOCUMENT_BYTES, and at most MAX_REFERRERS referrers of one digest are fetched.

A robot's ``bucket`` is a stable number in [0, 100) derived from its name; it takes the channel's release
when its bucket is below ``percent`` (phased rollouts: 34 % reaches about a third, always the same third).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_deploy.release.manifest import ReleaseError, ReleaseManifest
from edge_deploy.release.registry import Registry, RegistryError, ResponseTooLarge, split_repository
from edge_deploy.release.sigstore_bundle import (
    BUNDLE_MEDIA_TYPES,
    OTHER_KEY,
    BundleUnusable,
    signature_ok,
    subject_digests,
    verified_statement,
)

ARTIFACT_TYPE = "application/vnd.edge-deploy.channel.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CHANNEL_SCHEMA = 1
TAG_PREFIX = "channel-"
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # a channel or a signature payload is a few kB; refuse a blob of GBs
MAX_REFERRERS = 16  # referrers of one digest fetched in search of a cosign 3 bundle; the rest are not


class ChannelError(ReleaseError):
    """A channel cannot be published or read."""


class ChannelRefused(ChannelError):
    """A channel or one of its images is unsigned, signed with another key, or does not match its digest:
    nothing of it may be deployed."""


class ChannelMissing(ChannelError):
    """The channel has not been published in this repository."""


@dataclass(frozen=True)
class Channel:
    """A channel as read (and verified): which release, at which percentage, and the artifact's digest."""

    name: str
    repository: str
    percent: int
    manifest: ReleaseManifest
    digest: str  # the channel artifact's manifest digest (what the signature covers)
    published: str

    @property
    def version(self) -> str:
        return self.manifest.version


def check_channel_name(name: object) -> str:
    """``name`` when it can be a channel (it becomes a registry tag); else one sentence."""
    if not isinstance(name, str) or not CHANNEL_RE.match(name):
        raise ChannelError(
            f"Channel name {name!r} is not usable: expected up to 64 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit."
        )
    return name


def check_percent(percent: object) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ChannelError(f"A channel's percent must be a whole number from 0 to 100, got {percent!r}.")
    return percent


def channel_tag(name: str) -> str:
    return TAG_PREFIX + check_channel_name(name)


def bucket(robot_id: str) -> int:
    """The robot's stable rollout bucket in [0, 100): the first 8 bytes of SHA-256 of its name, mod 100
    (the same on every host and Python, unlike ``hash()``)."""
    digest = hashlib.sha256(robot_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_rollout(robot_id: str, percent: int) -> bool:
    """Whether a robot takes a channel's release at ``percent``: its bucket is below it (0 %: none)."""
    return bucket(robot_id) < percent


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- registry plumbing ----------------------------------------------------------------------------------
def _registry(host: str, registries: dict[str, Registry] | None) -> Registry:
    if registries is None:
        return Registry(host)
    if host not in registries:
        registries[host] = Registry(host)
    return registries[host]


def _upload_blob(reg: Registry, name: str, data: bytes) -> str:
    """Push one blob (monolithic upload) unless the repository has it; returns its digest."""
    digest = sha256_digest(data)
    head = reg._request("HEAD", f"{name}/blobs/{digest}", what=f"checking blob {digest[:19]}", ok=(200, 404))
    if head.status_code == 200:
        return digest
    start = reg._request("POST", f"{name}/blobs/uploads/", what=f"starting an upload to {name}", ok=(202,))
    location = start.headers.get("location", "")
    path = location.split("/v2/", 1)[1] if "/v2/" in location else ""
    if not path.startswith(f"{name}/blobs/uploads/"):
        raise ChannelError(
            f"Registry {reg.host} answered an upload with an unexpected location {location!r}."
        )
    sep = "&" if "?" in path else "?"
    reg._request(
        "PUT",
        f"{path}{sep}digest={digest}",
        what=f"uploading blob {digest[:19]} to {name}",
        ok=(201,),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    return digest


def _too_large(reg: Registry, name: str, what: str) -> ChannelRefused:
    return ChannelRefused(
        f"{what[:1].upper()}{what[1:]} from {reg.host}/{name} is larger than {MAX_DOCUMENT_BYTES} bytes, more than any channel, "
        "index or signature; refused."
    )


def _get_blob(reg: Registry, name: str, digest: str, what: str) -> bytes:
    """A blob's bytes, checked against its digest (a registry or cache that answers other bytes is refused)."""
    if not DIGEST_RE.match(digest):
        raise ChannelRefused(f"{what} names a malformed digest {digest!r}.")
    try:
        resp = reg._request(
            "GET",
            f"{name}/blobs/{digest}",
            what=f"fetching {what}",
            ok=(200, 404),
            max_bytes=MAX_DOCUMENT_BYTES,
        )
    except ResponseTooLarge:
        raise _too_large(reg, name, what) from None
    if resp.status_code == 404:
        raise ChannelRefused(f"{what} ({digest[:19]}) is missing from {reg.host}/{name}.")
    data = resp.content
    if sha256_digest(data) != digest:
        raise ChannelRefused(f"{what} from {reg.host}/{name} does not match its digest {digest[:19]}.")
    return data


def _get_manifest(reg: Registry, name: str, reference: str, what: str) -> tuple[str, dict[str, Any]]:
    """A manifest by tag or digest: (digest of the bytes received, parsed JSON). A reference by digest must
    be those bytes; a tag's digest is computed here, never taken from the registry's header."""
    try:
        m = reg.manifest(name, reference, max_bytes=MAX_DOCUMENT_BYTES)
    except ResponseTooLarge:
        raise _too_large(reg, name, what) from None
    except RegistryError as exc:
        if "does not exist" in str(exc):
            raise ChannelMissing(f"{what} does not exist in {reg.host}/{name} ({reference}).") from None
        raise
    digest = sha256_digest(m.body)
    if reference.startswith("sha256:") and digest != reference:
        raise ChannelRefused(f"{what} from {reg.host}/{name} does not match its digest {reference[:19]}.")
    try:
        doc = json.loads(m.body)
    except ValueError:
        raise ChannelRefused(f"{what} from {reg.host}/{name} is not JSON.") from None
    if not isinstance(doc, dict):
        raise ChannelRefused(f"{what} from {reg.host}/{name} is not a JSON object.")
    return digest, doc


# --- cosign's key-based signature format, verified in Python -----------------------------------------
def load_public_key(path: Path) -> Any:
    """The fleet's public key (cosign.pub: PEM); one sentence when it is missing or not a public key."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ChannelError(f"Public key {path} cannot be read ({exc.strerror or exc}).") from None
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ChannelError(f"Public key {path} is not a PEM public key (cosign.pub).") from None


def verify_cosign_signature(
    reg: Registry, name: str, digest: str, public_key: Any, what: str
) -> dict[str, Any]:
    """Raise ChannelRefused unless ``name@digest`` on ``reg`` carries a cosign signature that ``public_key``
    verifies and that names exactly ``digest``: cosign 2's (tag ``sha256-<hex>.sig``) or cosign 3's (a
    Sigstore bundle referring to the digest). Returns the verified claim as cosign 2's simple-signing
    payload states it (``critical.image.docker-manifest-digest``); from a bundle, that digest and the
    in-toto statement under ``statement``."""
    if not DIGEST_RE.match(digest):
        raise ChannelRefused(f"{what} is not pinned by a sha256 digest ({digest!r}).")
    sig_tag = digest.replace(":", "-") + ".sig"
    has_sig, claim = _simple_signing_claim(reg, name, digest, sig_tag, public_key, what)
    if claim is not None:
        return claim
    candidates = _bundle_referrers(reg, name, digest, what)
    reasons: list[str] = []
    for ref in candidates[:MAX_REFERRERS]:  # one bundle in memory at a time, each bounded
        bundle = _referred_bundle(reg, name, ref, digest, what)
        if bundle is None:
            continue
        try:
            statement = verified_statement(bundle, public_key)
        except BundleUnusable as exc:
            reasons.append(str(exc))
            continue
        covered = subject_digests(statement)
        if digest not in covered:
            shown = ", ".join(d[:19] for d in covered[:3]) or "no digest"
            raise ChannelRefused(f"{what}: the signature verifies but covers {shown}, not {digest[:19]}.")
        return {"critical": {"image": {"docker-manifest-digest": digest}}, "statement": statement}
    where = f"{reg.host}/{name}@{digest[:19]}"
    if not has_sig and not reasons:
        raise ChannelRefused(
            f"{what} ({where}) is not signed: no cosign signature ({sig_tag}, or a Sigstore bundle among "
            "its referrers) in the registry."
        )
    why = next((r for r in reasons if r != OTHER_KEY), "")
    shown = f": its Sigstore bundle {why}" if why else " (unsigned, or signed with another key)"
    more = (
        f"; only the first {MAX_REFERRERS} of its {len(candidates)} referrers were examined"
        if len(candidates) > MAX_REFERRERS
        else ""
    )
    raise ChannelRefused(
        f"{what} ({where}) has no signature that the fleet's public key verifies{shown}{more}."
    )


def _simple_signing_claim(
    reg: Registry, name: str, digest: str, sig_tag: str, public_key: Any, what: str
) -> tuple[bool, dict[str, Any] | None]:
    """cosign 2's signature of ``digest``: (whether tag ``sig_tag`` exists, the verified simple-signing
    payload or None). A payload that verifies but names another digest is refused outright."""
    try:
        _, sig_manifest = _get_manifest(reg, name, sig_tag, f"the signature of {what}")
    except ChannelMissing:
        return False, None
    layers = [lay for lay in sig_manifest.get("layers") or [] if isinstance(lay, dict)]
    for layer in layers:
        b64 = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if layer.get("mediaType") != SIMPLE_SIGNING or not isinstance(b64, str):
            continue
        try:
            signature = base64.b64decode(b64, validate=True)
        except ValueError:
            continue
        payload = _get_blob(reg, name, str(layer.get("digest", "")), f"the signature payload of {what}")
        if not signature_ok(public_key, signature, payload):
            continue
        try:
            claim = json.loads(payload)
            signed_digest = claim["critical"]["image"]["docker-manifest-digest"]
        except (ValueError, KeyError, TypeError):
            continue
        if signed_digest != digest:
            raise ChannelRefused(
                f"{what}: the signature verifies but covers {str(signed_digest)[:19]}, not {digest[:19]}."
            )
        return True, dict(claim)
    return True, None


def _referrers(reg: Registry, name: str, digest: str, what: str) -> list[dict[str, Any]]:
    """The digest's referrers, as OCI index entries: from the referrers API where the registry answers it,
    else (or when it lists none) from the referrers tag ``sha256-<hex>`` that cosign 3 writes instead."""
    try:
        resp = reg._request(
            "GET",
            f"{name}/referrers/{digest}",
            what=f"listing the referrers of {what}",
            ok=(200, *range(400, 500), 501),  # a registry without the API: the tag schema instead
            headers={"Accept": OCI_INDEX},
            max_bytes=MAX_DOCUMENT_BYTES,
        )
    except ResponseTooLarge:
        raise _too_large(reg, name, f"The referrers of {what}") from None
    index: object = None
    if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(OCI_INDEX):
        try:
            index = json.loads(resp.content)
        except ValueError:
            index = None
    entries = (
        [m for m in (index.get("manifests") or []) if isinstance(m, dict)] if isinstance(index, dict) else []
    )
    if entries:
        return entries
    try:
        _, index = _get_manifest(reg, name, digest.replace(":", "-"), f"the referrers of {what}")
    except ChannelMissing:
        return []
    return [m for m in index.get("manifests") or [] if isinstance(m, dict)]


def _bundle_referrers(reg: Registry, name: str, digest: str, what: str) -> list[str]:
    """The manifest digests of the referrers of ``digest`` that may hold a Sigstore bundle, in the order
    listed (an SBOM or other artifact is passed over; cosign 3's referrers tag lists its bundles with the
    empty artifact type)."""
    candidates: list[str] = []
    for entry in _referrers(reg, name, digest, what):
        kind, ref = entry.get("artifactType"), entry.get("digest")
        if entry.get("mediaType") not in (OCI_MANIFEST, None) or not isinstance(ref, str):
            continue
        if kind is not None and kind not in (*BUNDLE_MEDIA_TYPES, EMPTY_CONFIG):
            continue
        if DIGEST_RE.match(ref) and ref not in candidates:
            candidates.append(ref)
    return candidates


def _referred_bundle(reg: Registry, name: str, ref: str, digest: str, what: str) -> bytes | None:
    """The Sigstore bundle (bytes, unverified) that referrer ``ref`` holds for ``digest``; None when it is
    gone, refers to something else or holds no bundle."""
    try:
        _, manifest = _get_manifest(reg, name, ref, f"a referrer of {what}")
    except ChannelMissing:
        return None
    subject = manifest.get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != digest:
        return None
    layers = [lay for lay in manifest.get("layers") or [] if isinstance(lay, dict)]
    layer = next((lay for lay in layers if lay.get("mediaType") in BUNDLE_MEDIA_TYPES), None)
    if layer is None:
        return None
    return _get_blob(reg, name, str(layer.get("digest", "")), f"the signature bundle of {what}")


# --- publish (operator) --------------------------------------------------------------------------------
def channel_document(name: str, manifest: ReleaseManifest, percent: int) -> bytes:
    doc = {
        "schema_version": CHANNEL_SCHEMA,
        "channel": check_channel_name(name),
        "percent": check_percent(percent),
        "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "release": manifest.to_dict(),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def push_channel_artifact(
    repository: str,
    name: str,
    manifest: ReleaseManifest,
    percent: int,
    *,
    registries: dict[str, Registry] | None = None,
    before_tag: Callable[[str], object] | None = None,
) -> str:
    """Push the channel artifact (unsigned) under tag ``channel-<name>``; returns its digest. With
    ``before_tag`` (signing), the artifact is pushed by digest and handed to it first, so the tag never
    points at an artifact that agents would refuse as unsigned."""
    tag = channel_tag(name)
    host, repo = split_repository(repository)
    reg = _registry(host, registries)
    body = channel_document(name, manifest, percent)
    config_digest = _upload_blob(reg, repo, EMPTY_JSON)
    layer_digest = _upload_blob(reg, repo, body)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": len(EMPTY_JSON)},
        "layers": [
            {
                "mediaType": ARTIFACT_TYPE,
                "digest": layer_digest,
                "size": len(body),
                "annotations": {"org.opencontainers.image.title": f"{tag}.json"},
            }
        ],
        "annotations": {
            "org.opencontainers.image.version": manifest.version,
            "dev.edge-deploy.channel.percent": str(percent),
        },
    }
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    digest = sha256_digest(raw)

    def put(reference: str, shown: str) -> None:
        reg._request(
            "PUT",
            f"{repo}/manifests/{reference}",
            what=f"publishing {shown}",
            ok=(201, 200),
            content=raw,
            headers={"Content-Type": OCI_MANIFEST},
        )

    if before_tag is not None:  # by digest first, so it can be signed before the tag points at it
        put(digest, f"{repository}@{digest[:19]}")
        before_tag(f"{repository}@{digest}")
    put(tag, f"{repository}:{tag}")
    return digest


def publish_channel(
    repository: str,
    name: str,
    manifest: ReleaseManifest,
    percent: int,
    key: Path | str,
    *,
    password: str | None = None,
    registries: dict[str, Registry] | None = None,
    public_key: Any | None = None,
) -> str:
    """Publish ``manifest`` at ``percent`` under ``repository:channel-<name>`` and sign the artifact with
    the fleet's cosign ``key`` (the cosign binary, as releases are signed); returns the artifact's digest.
    The images themselves must already be signed (``release create`` signs them).

    ``public_key`` (the fleet's, loaded): the new signature is verified with it, as agents will, before
    the tag moves; a signing key that is not the fleet's then leaves the channel as it was."""
    from edge_deploy.release.signing import sign_image

    def sign(ref: str) -> None:  # signed (and checked) before agents can see it
        sign_image(ref, key, password=password)
        if public_key is not None:
            host, repo = split_repository(repository)
            reg = _registry(host, registries)
            what = f"Channel {name!r} as just signed"
            verify_cosign_signature(reg, repo, ref.rpartition("@")[2], public_key, what)

    return push_channel_artifact(repository, name, manifest, percent, registries=registries, before_tag=sign)


# --- promote (operator): one release onto one channel, without a rollout's waits ----------------------
REPOSITORY_RE = re.compile(
    r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*\Z"
)


def check_repository(repository: object) -> str:
    """``repository`` when it is ``HOST[:PORT]/name`` as OCI spells it; else one sentence."""
    if not isinstance(repository, str) or not REPOSITORY_RE.match(repository):
        raise ChannelError(
            f"Repository {repository!r} is not usable for a channel: expected HOST[:PORT]/name in "
            "lowercase (e.g. localhost:5000/edge-deploy/runtime)."
        )
    split_repository(repository)
    return repository


@dataclass(frozen=True)
class Promotion:
    """What ``promote_channel`` published: robots polling ``channel`` now see ``version`` at ``percent``."""

    channel: str
    repository: str
    version: str
    percent: int
    digest: str  # the channel artifact's digest (what its signature covers)
    unsigned: tuple[str, ...]  # images published without a signature the fleet's key verifies (opted out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "tag": channel_tag(self.channel),
            "repository": self.repository,
            "version": self.version,
            "percent": self.percent,
            "digest": self.digest,
            "unsigned_images": list(self.unsigned),
        }


def promote_channel(
    manifest: ReleaseManifest,
    name: str,
    percent: int,
    sign_key: Path | str,
    public_key: Path,
    *,
    repository: str | None = None,
    allow_unsigned: tuple[str, ...] = (),
    password: str | None = None,
    registries: dict[str, Registry] | None = None,
) -> Promotion:
    """Publish ``manifest`` on channel ``name`` at ``percent`` (``publish_channel``, as a pull-mode rollout
    does for each wave), after checking every image's signature with the fleet's ``public_key`` the way
    agents will, so that an unsigned release never reaches a channel. ``allow_unsigned`` names images the
    operator publishes anyway (agents that verify will refuse the channel; for trials only); their index is
    still checked. The channel's own signature is verified before its tag moves."""
    check_channel_name(name)
    check_percent(percent)
    repository = check_repository(repository or manifest.runtime.repository)
    unknown = sorted(set(allow_unsigned) - set(manifest.images))
    if unknown:
        raise ChannelError(
            f"Image(s) {', '.join(unknown)} allowed unsigned are not in release {manifest.version} "
            f"(its images: {', '.join(manifest.images)})."
        )
    regs: dict[str, Registry] = {} if registries is None else registries
    key = load_public_key(public_key)
    unsigned: list[str] = []
    for image_name, image in manifest.images.items():
        host, repo = split_repository(image.repository)
        what = f"Image {image_name!r} of release {manifest.version}"
        try:
            verify_cosign_signature(_registry(host, regs), repo, image.digest, key, what)
        except ChannelRefused:
            if image_name not in allow_unsigned:
                raise
            unsigned.append(image_name)
        verify_release_image(
            image_name, image.repository, image.digest, image.platforms, key, regs, signed=False
        )
    digest = publish_channel(
        repository, name, manifest, percent, sign_key, password=password, registries=regs, public_key=key
    )
    return Promotion(name, repository, manifest.version, percent, digest, tuple(unsigned))


# --- read (robot) ---------------------------------------------------------------------------------------
def read_channel(
    repository: str,
    name: str,
    public_key: Path,
    *,
    platform: str | None = None,
    registries: dict[str, Registry] | None = None,
    verified: Channel | None = None,
) -> Channel:
    """Read and verify ``repository:channel-<name>``: the artifact's signature, then every image's
    signature by digest and its index (the bytes of its digest, listing the platform digests the release
    recorded; with ``platform``, that platform must be among them). Raises ChannelMissing when the channel
    is not published, ChannelRefused when anything is unsigned or mismatched, RegistryError when the
    registry cannot be reached.

    ``verified``: the channel as this caller last verified it (same repository, name, key and platform).
    When the tag still holds those bytes (same digest), it is returned after that one request: a robot's
    poll of an unchanged channel costs the registry one small GET, not the seven of a full verification."""
    tag = channel_tag(name)
    key = load_public_key(public_key)
    host, repo = split_repository(repository)
    reg = _registry(host, registries)
    what = f"Channel {name!r}"
    digest, doc = _get_manifest(reg, repo, tag, what)
    if verified is not None and (verified.digest, verified.repository, verified.name) == (
        digest,
        repository,
        name,
    ):
        return verified
    verify_cosign_signature(reg, repo, digest, key, what)
    layers = [lay for lay in doc.get("layers") or [] if isinstance(lay, dict)]
    layer = next((lay for lay in layers if lay.get("mediaType") == ARTIFACT_TYPE), None)
    if doc.get("artifactType") != ARTIFACT_TYPE or layer is None:
        raise ChannelRefused(f"{what} at {repository}:{tag} is not a channel artifact ({ARTIFACT_TYPE}).")
    body = _get_blob(reg, repo, str(layer.get("digest", "")), f"{what}'s document")
    try:
        data = json.loads(body)
    except ValueError:
        raise ChannelRefused(f"{what}'s document is not JSON.") from None
    if not isinstance(data, dict) or data.get("schema_version") != CHANNEL_SCHEMA:
        raise ChannelRefused(f"{what}'s document has an unknown schema (expected {CHANNEL_SCHEMA}).")
    if data.get("channel") != name:
        raise ChannelRefused(f"{what}'s signed document is for channel {data.get('channel')!r}.")
    try:
        percent = check_percent(data.get("percent"))
    except ChannelError as exc:
        raise ChannelRefused(f"{what}: {exc}") from None
    try:
        manifest = ReleaseManifest.from_dict(data.get("release"), source=f"{what}'s release manifest")
    except ReleaseError as exc:
        raise ChannelRefused(str(exc)) from None
    for image_name, image in manifest.images.items():
        verify_release_image(
            image_name, image.repository, image.digest, image.platforms, key, registries, platform
        )
    return Channel(name, repository, percent, manifest, digest, str(data.get("published", "")))


def verify_release_image(
    image_name: str,
    repository: str,
    digest: str,
    platforms: dict[str, str],
    key: Any,
    registries: dict[str, Registry] | None,
    platform: str | None = None,
    *,
    signed: bool = True,
) -> None:
    """One image of a channel's release: signed by the fleet's key over ``digest``, its index the bytes of
    that digest, listing every platform digest the release recorded. ``signed=False``: the index only
    (the caller checked the signature itself)."""
    host, repo = split_repository(repository)
    reg = _registry(host, registries)
    what = f"Image {image_name!r} of the channel's release"
    if signed:
        verify_cosign_signature(reg, repo, digest, key, what)
    _, index = _get_manifest(reg, repo, digest, what)
    listed = {
        str(
            m.get("digest")
        ): f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
        for m in index.get("manifests") or []
        if isinstance(m, dict)
    }
    if not listed:
        return  # a single-platform manifest: its own digest is what was signed and checked
    for plat, plat_digest in platforms.items():
        if plat_digest not in listed:
            raise ChannelRefused(
                f"{what} ({repository}@{digest[:19]}) does not list the {plat} digest the release recorded "
                f"({plat_digest[:19]})."
            )
    if platform is not None and platform not in listed.values():
        raise ChannelRefused(f"{what} ({repository}@{digest[:19]}) has no {platform} image.")
