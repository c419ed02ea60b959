"""Channels and images signed with cosign 3 (Sigstore bundles stored as OCI referrers, found through the
referrers tag ``sha256-<hex>`` on our registry 2.8, or through the referrers API where a registry answers
it), verified in Python as robots verify cosign 2's signatures. Real cosign 3 signatures against the local
registry (127.0.0.1:5000): read back verified; another key, a bundle naming another digest, an attestation,
a ``sign-blob`` bundle and an unsigned artifact refused; cosign 2 and 3 mixed in one release accepted. Plus
the bounds a hostile registry meets (referrers examined, bytes read)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edge_deploy.release import signing
from edge_deploy.release.channel import (
    MAX_DOCUMENT_BYTES,
    MAX_REFERRERS,
    ChannelMissing,
    ChannelRefused,
    load_public_key,
    promote_channel,
    publish_channel,
    push_channel_artifact,
    read_channel,
    verify_cosign_signature,
)
from edge_deploy.release.manifest import ReleaseImage
from edge_deploy.release.registry import Registry
from edge_deploy.release.sigstore_bundle import BundleUnusable, pae, subject_digests, verified_statement
from tests.build.channels import PASSWORD, key_pair, need_registry_and_cosign, push_image, release, sign
from tests.build.cli_helpers import run_cli
from tests.support import need

REGISTRY = os.environ.get("EDGE_REGISTRY_ADDR", "127.0.0.1:5000")
HOST_BIN = Path(os.environ.get("EDGE_HOST_BIN", "/opt/edge-deploy/host/bin"))
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def cosign3_path() -> str | None:
    """cosign 3 as host-setup installs it (beside cosign 2, as ``cosign3``), or EDGE_COSIGN3."""
    candidates = [os.environ.get("EDGE_COSIGN3", ""), str(HOST_BIN / "cosign3")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@dataclass
class Setup:
    repo: str  # REGISTRY/name
    name: str
    cosign3: str
    key: Path
    pub: Path
    other_key: Path
    image3: ReleaseImage  # signed with key by cosign 3
    image2: ReleaseImage  # signed with key by cosign 2

    @contextmanager
    def operator_cosign3(self) -> Iterator[None]:
        """The operator's cosign is cosign 3 (what ``sign_image`` finds on PATH, through EDGE_COSIGN)."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(signing, "COSIGN", self.cosign3)
            yield

    def sign3(self, image: ReleaseImage, key: Path) -> None:
        with self.operator_cosign3():
            sign(image, key)

    def cosign3_run(self, *args: str) -> None:
        """cosign 3 offline (a signing config without transparency log), the key's password given."""
        config = self.key.parent.parent / "signing-config.json"
        config.write_text(json.dumps(signing.NO_TLOG_SIGNING_CONFIG))
        env = {**os.environ, "COSIGN_PASSWORD": PASSWORD}
        cmd = [self.cosign3, *args[:1], "--signing-config", str(config), "--yes", *args[1:]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_registry_and_cosign()
    cosign3 = cosign3_path()
    need(cosign3 is not None, f"cosign 3 ({HOST_BIN}/cosign3 or EDGE_COSIGN3; scripts/host-setup)")
    assert cosign3 is not None
    assert signing.detect(cosign3).major == 3, signing.detect(cosign3)
    assert signing.cosign().major == 2, "cosign on PATH should be cosign 2 (scripts/host-setup)"
    root = tmp_path_factory.mktemp("channel-cosign3")
    key, pub = key_pair(root / "fleet")
    other_key, _ = key_pair(root / "other")
    name = f"edge-deploy-channel/{secrets.token_hex(4)}"
    image3, image2 = push_image(name), push_image(name)
    s = Setup(f"{REGISTRY}/{name}", name, cosign3, key, pub, other_key, image3, image2)
    s.sign3(image3, key)
    sign(image2, key)
    yield s


# --- the registry, raw (to look at what cosign 3 wrote, and to forge what a hostile registry could) -----
def _url(s: Setup, path: str) -> str:
    return f"http://{REGISTRY}/v2/{s.name}/{path}"


def tags(s: Setup) -> list[str]:
    return list(httpx.get(_url(s, "tags/list"), timeout=10).json()["tags"])


def get_manifest(s: Setup, ref: str) -> dict[str, Any]:
    resp = httpx.get(_url(s, f"manifests/{ref}"), headers={"Accept": f"{INDEX}, {MANIFEST}"}, timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


def put_manifest(s: Setup, ref: str | None, doc: dict[str, Any], media: str) -> str:
    body = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    resp = httpx.put(
        _url(s, f"manifests/{ref or digest}"), content=body, headers={"content-type": media}, timeout=10
    )
    resp.raise_for_status()
    return digest


def put_blob(s: Setup, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = httpx.post(_url(s, "blobs/uploads/"), timeout=10)
    start.raise_for_status()
    loc = start.headers["location"]
    loc = loc if loc.startswith("http") else f"http://{REGISTRY}{loc}"
    httpx.put(
        f"{loc}{'&' if '?' in loc else '?'}digest={digest}", content=data, timeout=10
    ).raise_for_status()
    return digest


def referrers_tag(digest: str) -> str:
    return digest.replace(":", "-")


def referrer(s: Setup, subject: str, bundle_digest: str, size: int, nonce: str = "") -> tuple[str, int]:
    """A referrer manifest of ``subject`` holding the bundle blob, as cosign 3 writes one; (digest, size)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": BUNDLE,
        "config": {"mediaType": EMPTY, "size": 2, "digest": put_blob(s, b"{}")},
        "layers": [{"mediaType": BUNDLE, "size": size, "digest": bundle_digest}],
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope", "nonce": nonce},
        "subject": {"mediaType": INDEX, "size": 0, "digest": subject},
    }
    return put_manifest(s, None, doc, MANIFEST), len(json.dumps(doc).encode())


def put_referrers(s: Setup, subject: str, entries: list[tuple[str, int]]) -> None:
    """The referrers tag of ``subject`` listing ``entries`` (what cosign 3 writes without a referrers API)."""
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "size": n, "digest": d, "artifactType": EMPTY} for d, n in entries
        ],
    }
    put_manifest(s, referrers_tag(subject), index, INDEX)


def first_bundle(s: Setup, subject: str) -> bytes:
    """The bundle blob of the first referrer cosign 3 listed for ``subject``."""
    entry = get_manifest(s, referrers_tag(subject))["manifests"][0]
    layer = get_manifest(s, entry["digest"])["layers"][0]
    return httpx.get(_url(s, f"blobs/{layer['digest']}"), timeout=10).content


def verify(s: Setup, digest: str, registry: Registry | None = None) -> dict[str, Any]:
    reg = registry or Registry(REGISTRY)
    return verify_cosign_signature(reg, s.name, digest, load_public_key(s.pub), "Image 'runtime'")


pytestmark = pytest.mark.docker


# --- cosign 3, end to end ----------------------------------------------------------------------------
def test_a_cosign3_channel_and_image_read_back_verified(setup: Setup) -> None:
    m = release("3.0.0", setup.image3)
    with setup.operator_cosign3():  # published as a cosign 3 operator does, checked as agents will
        digest = publish_channel(
            setup.repo, "c3", m, 34, setup.key, password=PASSWORD, public_key=load_public_key(setup.pub)
        )
    now = tags(setup)
    for signed in (digest, setup.image3.digest):  # cosign 3's format, not cosign 2's
        assert referrers_tag(signed) in now and referrers_tag(signed) + ".sig" not in now
    assert setup.image3.signature == f"{setup.repo}:{referrers_tag(setup.image3.digest)}"
    ch = read_channel(setup.repo, "c3", setup.pub, platform="linux/arm64")
    assert (ch.version, ch.percent, ch.digest) == ("3.0.0", 34, digest)
    assert ch.manifest.runtime.ref == setup.image3.ref
    claim = verify(setup, setup.image3.digest)
    assert claim["critical"]["image"]["docker-manifest-digest"] == setup.image3.digest
    assert subject_digests(claim["statement"]) == [setup.image3.digest]
    assert claim["statement"]["predicateType"] == "https://sigstore.dev/cosign/sign/v1"


def test_a_cosign3_channel_signed_with_another_key_is_refused(setup: Setup) -> None:
    m = release("3.0.0", setup.image3)
    with setup.operator_cosign3():
        publish_channel(setup.repo, "c3-theirs", m, 100, setup.other_key, password=PASSWORD)
        with pytest.raises(ChannelRefused, match=r"has no signature that the fleet's public key verifies"):
            # the operator's own check: the tag is never moved onto an artifact agents would refuse
            publish_channel(
                setup.repo,
                "c3-never",
                m,
                100,
                setup.other_key,
                password=PASSWORD,
                public_key=load_public_key(setup.pub),
            )
    with pytest.raises(
        ChannelRefused,
        match=r"^Channel 'c3-theirs' .* no signature that the fleet's public key verifies \(unsigned, or "
        r"signed with another key\)\.$",
    ):
        read_channel(setup.repo, "c3-theirs", setup.pub)
    with pytest.raises(ChannelMissing):
        read_channel(setup.repo, "c3-never", setup.pub)


def test_an_image_signed_by_cosign3_with_another_key_is_refused(setup: Setup) -> None:
    theirs = push_image(setup.name)
    setup.sign3(theirs, setup.other_key)
    with setup.operator_cosign3():
        publish_channel(
            setup.repo, "c3-their-image", release("3.1.0", theirs), 100, setup.key, password=PASSWORD
        )
    with pytest.raises(ChannelRefused, match=r"Image 'runtime' .* no signature that the fleet's public key"):
        read_channel(setup.repo, "c3-their-image", setup.pub)


def test_a_bundle_whose_statement_names_another_digest_is_refused(setup: Setup) -> None:
    """The fleet's genuine bundle for image3, attached by a hostile registry to another image."""
    victim = push_image(setup.name)
    bundle = first_bundle(setup, setup.image3.digest)
    put_referrers(
        setup, victim.digest, [referrer(setup, victim.digest, put_blob(setup, bundle), len(bundle))]
    )
    covers = rf"covers {setup.image3.digest[:19]}, not {victim.digest[:19]}\.$"
    with pytest.raises(ChannelRefused, match=rf"^Image 'runtime': the signature verifies but {covers}"):
        verify(setup, victim.digest)
    with setup.operator_cosign3():
        publish_channel(setup.repo, "c3-copied", release("3.2.0", victim), 100, setup.key, password=PASSWORD)
    with pytest.raises(ChannelRefused, match=covers):
        read_channel(setup.repo, "c3-copied", setup.pub)


def test_unsigned_channel_and_image_are_refused_naming_both_formats(setup: Setup) -> None:
    push_channel_artifact(setup.repo, "c3-unsigned", release("3.0.0", setup.image3), 100)
    both = r"is not signed: no cosign signature \(sha256-[0-9a-f]{64}\.sig, or a Sigstore bundle among its referrers\)"
    with pytest.raises(ChannelRefused, match=rf"^Channel 'c3-unsigned' .* {both} in the registry\.$"):
        read_channel(setup.repo, "c3-unsigned", setup.pub)
    unsigned = push_image(setup.name)
    with setup.operator_cosign3():
        publish_channel(
            setup.repo, "c3-unsigned-image", release("3.0.0", unsigned), 100, setup.key, password=PASSWORD
        )
    with pytest.raises(ChannelRefused, match=rf"^Image 'runtime' .* {both}"):
        read_channel(setup.repo, "c3-unsigned-image", setup.pub)


@pytest.mark.parametrize("channel_by", ["cosign3", "cosign2"])
def test_cosign2_and_cosign3_mixed_in_one_release_are_accepted(setup: Setup, channel_by: str) -> None:
    """Image by cosign 2 and channel by cosign 3, and the other way round."""
    image = setup.image2 if channel_by == "cosign3" else setup.image3
    name = f"mixed-{channel_by}"
    m = release("3.3.0", image)
    if channel_by == "cosign3":
        with setup.operator_cosign3():
            digest = publish_channel(setup.repo, name, m, 50, setup.key, password=PASSWORD)
    else:
        digest = publish_channel(setup.repo, name, m, 50, setup.key, password=PASSWORD)
    ch = read_channel(setup.repo, name, setup.pub, platform="linux/arm64")
    assert (ch.version, ch.digest, ch.manifest.runtime.ref) == ("3.3.0", digest, image.ref)
    signature_tag = referrers_tag(digest) + (".sig" if channel_by == "cosign2" else "")
    assert signature_tag in tags(setup)


def test_an_attestation_by_the_fleets_key_is_not_a_signature(setup: Setup, tmp_path: Path) -> None:
    image = push_image(setup.name)
    predicate = tmp_path / "provenance.json"
    predicate.write_text('{"builder": {"id": "https://example.com/ci"}}')
    setup.cosign3_run(
        "attest",
        "--key",
        str(setup.key),
        "--predicate",
        str(predicate),
        "--type",
        "slsaprovenance",
        image.ref,
    )
    with pytest.raises(
        ChannelRefused,
        match=r"no signature that the fleet's public key verifies: its Sigstore bundle is an attestation "
        r"\(https://slsa\.dev/provenance/v0\.2\), not a cosign signature\.$",
    ):
        verify(setup, image.digest)
    setup.sign3(image, setup.key)  # signed as well: the signature among its referrers is found
    assert len(get_manifest(setup, referrers_tag(image.digest))["manifests"]) == 2
    assert verify(setup, image.digest)["critical"]["image"]["docker-manifest-digest"] == image.digest


def test_a_sign_blob_bundle_is_not_an_image_signature(setup: Setup, tmp_path: Path) -> None:
    """A message signature by the fleet's key over the image index's bytes (``cosign sign-blob``, as a
    development release is signed), attached as a referrer: it names no image, so it is refused."""
    image = push_image(setup.name)
    blob = tmp_path / "index.json"
    blob.write_bytes(httpx.get(_url(setup, f"manifests/{image.digest}"), headers={"Accept": INDEX}).content)
    out = tmp_path / "index.bundle"
    setup.cosign3_run("sign-blob", "--key", str(setup.key), "--bundle", str(out), str(blob))
    data = out.read_bytes()
    assert "messageSignature" in json.loads(data)
    put_referrers(setup, image.digest, [referrer(setup, image.digest, put_blob(setup, data), len(data))])
    with pytest.raises(
        ChannelRefused, match=r"its Sigstore bundle holds a message signature \(as `cosign sign-blob`"
    ):
        verify(setup, image.digest)


def test_a_keyless_bundle_is_not_accepted_for_key_based_verification(setup: Setup) -> None:
    """The fleet's real bundle with a certificate added to its verification material (a keyless signature
    is not made here: it needs Sigstore's services), attached to an image: refused in one sentence."""
    image = push_image(setup.name)
    bundle = json.loads(first_bundle(setup, setup.image3.digest))
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": "MIIBkzCCATmgAwIBAgIU"}}
    data = json.dumps(bundle).encode()
    put_referrers(setup, image.digest, [referrer(setup, image.digest, put_blob(setup, data), len(data))])
    with pytest.raises(
        ChannelRefused,
        match=r"^Image 'runtime' \(.*\) has no signature that the fleet's public key verifies: its Sigstore "
        r"bundle is signed keyless \(it carries a certificate\), which key-based verification does not "
        r"accept\.$",
    ):
        verify(setup, image.digest)


# --- a hostile registry's bounds ---------------------------------------------------------------------
def test_the_referrers_examined_are_bounded(setup: Setup) -> None:
    """Referrers signed with another key listed first: only MAX_REFERRERS are fetched, and the sentence
    says so; the fleet's signature placed among the first is found."""
    image = push_image(setup.name)
    setup.sign3(image, setup.key)
    good = get_manifest(setup, referrers_tag(image.digest))["manifests"][0]
    theirs = push_image(setup.name)
    setup.sign3(theirs, setup.other_key)
    decoy = first_bundle(setup, theirs.digest)
    decoy_digest = put_blob(setup, decoy)
    decoys = [
        referrer(setup, image.digest, decoy_digest, len(decoy), nonce=str(i))
        for i in range(MAX_REFERRERS + 4)
    ]
    put_referrers(setup, image.digest, [*decoys, (good["digest"], good["size"])])
    seen: list[str] = []
    client = httpx.Client(timeout=10, event_hooks={"request": [lambda r: seen.append(r.url.path)]})
    with pytest.raises(
        ChannelRefused,
        match=rf"\(unsigned, or signed with another key\); only the first {MAX_REFERRERS} of its "
        rf"{MAX_REFERRERS + 5} referrers were examined\.$",
    ):
        verify(setup, image.digest, Registry(REGISTRY, client=client))
    fetched = [p for p in seen if "/manifests/sha256:" in p]
    assert len(fetched) == MAX_REFERRERS, seen
    put_referrers(setup, image.digest, [*decoys[:3], (good["digest"], good["size"]), *decoys[3:]])
    assert verify(setup, image.digest)["critical"]["image"]["docker-manifest-digest"] == image.digest


def test_the_referrers_api_is_used_where_the_registry_answers_it(setup: Setup) -> None:
    """A registry with the referrers API (a proxy in front of ours answering it, and hiding the referrers
    tag): the bundle is found through the API."""
    upstream = httpx.Client(timeout=10)
    asked: list[str] = []
    tag_path = f"/v2/{setup.name}/manifests/{referrers_tag(setup.image3.digest)}"

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == f"/v2/{setup.name}/referrers/{setup.image3.digest}":
            index = get_manifest(setup, referrers_tag(setup.image3.digest))
            return httpx.Response(200, json=index, headers={"content-type": INDEX})
        if request.url.path == tag_path:
            return httpx.Response(404)
        got = upstream.request(
            request.method, str(request.url), headers=request.headers, content=request.content
        )
        return httpx.Response(got.status_code, headers=got.headers, content=got.content)

    proxied = Registry(REGISTRY, client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert verify(setup, setup.image3.digest, proxied)["critical"]["image"]["docker-manifest-digest"] == (
        setup.image3.digest
    )
    assert f"/v2/{setup.name}/referrers/{setup.image3.digest}" in asked and tag_path not in asked


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_an_oversized_answer_is_refused_before_it_is_read(declared: bool) -> None:
    """A registry answering a signature's manifest with more than MAX_DOCUMENT_BYTES: refused in one
    sentence, reading at most one chunk past the bound (none when the length is announced)."""
    chunk, sent = b"x" * 65536, [0]

    def body() -> Iterator[bytes]:
        while sent[0] < 64 * 1024 * 1024:
            sent[0] += len(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": MANIFEST, **({"content-length": str(1 << 30)} if declared else {})}
        return httpx.Response(200, headers=headers, content=body())

    reg = Registry("localhost:5000", client=httpx.Client(transport=httpx.MockTransport(handler)))
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(
        ChannelRefused,
        match=rf"^The signature of Image 'x' from localhost:5000/r is larger than {MAX_DOCUMENT_BYTES} bytes",
    ):
        verify_cosign_signature(reg, "r", "sha256:" + "a" * 64, key, "Image 'x'")
    assert sent[0] <= (0 if declared else MAX_DOCUMENT_BYTES + len(chunk)), sent


# --- the agent's way, with a cosign 3 operator ---------------------------------------------------------
def test_a_cosign3_operator_promotes_and_the_agent_check_verifies_it(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = push_image(setup.name)
    setup.sign3(image, setup.key)
    with setup.operator_cosign3():
        done = promote_channel(
            release("3.4.0", image), "c3-promoted", 100, setup.key, setup.pub, password=PASSWORD
        )
    assert (done.version, done.unsigned) == ("3.4.0", ())
    cfg = tmp_path / "agent.yaml"
    raw = {"robot": "arm-1", "repository": setup.repo, "channel": "c3-promoted", "public_key": str(setup.pub)}
    cfg.write_text(yaml.safe_dump(raw))
    code, out, err = run_cli(capsys, "agent", "check", "--config", str(cfg))
    assert code == 0, err
    said = json.loads(out)
    assert (said["version"], said["digest"], said["for_this_robot"]) == ("3.4.0", done.digest, True)
    assert said["runtime"] == image.ref


# --- one bundle, without a registry ------------------------------------------------------------------
def test_pae_is_dsse_v1() -> None:
    # The DSSE specification's own example.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.mark.parametrize(
    ("bundle", "why"),
    [
        (
            {"verificationMaterial": {"certificate": {"rawBytes": "MIIB"}}, "dsseEnvelope": {}},
            "is signed keyless \\(it carries a certificate\\)",
        ),
        (
            {"verificationMaterial": {"x509CertificateChain": {"certificates": []}}, "dsseEnvelope": {}},
            "is signed keyless",
        ),
        ({"verificationMaterial": {"publicKey": {}}, "messageSignature": {}}, "holds a message signature"),
        (
            {"dsseEnvelope": {"payloadType": "text/plain", "payload": "aGk=", "signatures": []}},
            "not an in-toto statement",
        ),
        ({"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "e30="}}, "fleet's key"),
    ],
)
def test_bundles_that_cannot_vouch_for_an_image(bundle: dict[str, Any], why: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    data = json.dumps({"mediaType": BUNDLE, **bundle}).encode()
    with pytest.raises(BundleUnusable, match=why):
        verified_statement(data, key)
    with pytest.raises(BundleUnusable, match="not a Sigstore bundle"):
        verified_statement(json.dumps({"mediaType": "application/json", **bundle}).encode(), key)
