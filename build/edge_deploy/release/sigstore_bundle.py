"""cosign 3's image signatures, checked in Python against the fleet's public key, as robots check cosign 2's.

``cosign sign --key`` (cosign 3) stores a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``)
as an OCI referrer of the signed digest. With a key, the bundle's ``verificationMaterial`` holds only a
``publicKey`` hint, and its ``dsseEnvelope`` carries an in-toto statement (payload type
``application/vnd.in-toto+json``, predicate ``https://sigstore.dev/cosign/sign/v1``) whose subject is the
image digest; each signature is over DSSE's pre-authentication encoding, PAE(payloadType, payload).

This module reads one bundle's bytes: the signature must verify with the key, the statement must be a
cosign signature (not some other attestation the same key made), and its subject digests are returned for
the caller to compare. A keyless bundle (a certificate) or a message signature (``sign-blob`` style) is
refused for key-based verification. sigstore-python is not used: it verifies against Sigstore's trust root
(certificates, transparency log), not against a bare public key offline, which is what a robot holds.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

BUNDLE_MEDIA_TYPES = (
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
)
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
MAX_SIGNATURES = 8  # a DSSE envelope from cosign holds one; more are not examined
OTHER_KEY = "is not signed with the fleet's key"  # the ordinary refusal, said in the caller's own words


class BundleUnusable(Exception):
    """A bundle that cannot vouch for the digest; the message completes "the bundle …" in one clause."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs (the type cannot be swapped)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def signature_ok(public_key: Any, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies with ``public_key`` (ECDSA / RSA PKCS#1 v1.5 with
    SHA-256, or Ed25519: what cosign's keys are)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _b64(value: object) -> bytes | None:
    """Standard or URL-safe base64, padded or not (protobuf's JSON reads all four); None otherwise."""
    if not isinstance(value, str):
        return None
    padded = value + "=" * (-len(value) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (ValueError, binascii.Error):
            continue
    return None


def verified_statement(data: bytes, public_key: Any) -> dict[str, Any]:
    """The in-toto statement of the bundle ``data`` once its DSSE signature verifies with ``public_key``
    and it is a cosign signature; BundleUnusable (why, in a clause) otherwise."""
    try:
        bundle = json.loads(data)
    except ValueError:
        raise BundleUnusable("is not JSON") from None
    if not isinstance(bundle, dict) or bundle.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise BundleUnusable("is not a Sigstore bundle cosign writes (v0.2 or v0.3)")
    material = bundle.get("verificationMaterial")
    if isinstance(material, dict) and ("certificate" in material or "x509CertificateChain" in material):
        raise BundleUnusable(
            "is signed keyless (it carries a certificate), which key-based verification does not accept"
        )
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        if "messageSignature" in bundle:
            raise BundleUnusable(
                "holds a message signature (as `cosign sign-blob` makes), not a DSSE envelope naming the "
                "image, which key-based verification of an image does not accept"
            )
        raise BundleUnusable("holds no DSSE envelope")
    payload_type = envelope.get("payloadType")
    payload = _b64(envelope.get("payload"))
    if payload_type != IN_TOTO_PAYLOAD or payload is None:
        raise BundleUnusable(
            f"holds a DSSE envelope of type {str(payload_type)[:80]!r}, not an in-toto statement"
        )
    message = pae(payload_type, payload)
    signatures = [s for s in envelope.get("signatures") or [] if isinstance(s, dict)][:MAX_SIGNATURES]
    if not any(
        (raw := _b64(s.get("sig"))) is not None and signature_ok(public_key, raw, message) for s in signatures
    ):
        raise BundleUnusable(OTHER_KEY)
    try:
        statement = json.loads(payload)
    except ValueError:
        raise BundleUnusable("signs a payload that is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") not in STATEMENT_TYPES:
        raise BundleUnusable("signs something other than an in-toto statement")
    if statement.get("predicateType") != SIGN_PREDICATE:
        raise BundleUnusable(
            f"is an attestation ({str(statement.get('predicateType'))[:80]}), not a cosign signature"
        )
    return statement


def subject_digests(statement: dict[str, Any]) -> list[str]:
    """The ``sha256:<hex>`` digests a statement names as its subjects."""
    out = []
    for subject in statement.get("subject") or []:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str):
            out.append(f"sha256:{value}")
    return out
