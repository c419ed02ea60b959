"""Image signatures with cosign 2 or 3: a key (file, ``env://`` or a KMS reference) offline against our
registry (no transparency log), or keyless with the ambient OIDC identity of a CI job.

Signing with a key file or ``env://`` key reads ``COSIGN_PASSWORD`` from the environment (a CI secret);
verification needs only the public key. We always sign and verify ``repository@digest``: a tag can be
moved, a digest cannot. cosign 3 refuses ``--tlog-upload=false``, so its offline path passes a signing
config that names no transparency log or timestamp authority instead; the version is detected once per
binary (``cosign version --json``, else the flags its ``sign --help`` lists, as distribution builds report
``devel``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_deploy.release.manifest import ReleaseError

log = logging.getLogger(__name__)

COSIGN = os.environ.get("EDGE_COSIGN", "cosign")
TIMEOUT_S = 300

# `--key keyless` (or EDGE_COSIGN_KEY=keyless): sign with the job's OIDC identity (Fulcio certificate,
# Rekor entry); verification then needs the expected identity and issuer instead of a public key.
KEYLESS = "keyless"
IDENTITY_ENV = "EDGE_COSIGN_IDENTITY"
IDENTITY_REGEXP_ENV = "EDGE_COSIGN_IDENTITY_REGEXP"
ISSUER_ENV = "EDGE_COSIGN_OIDC_ISSUER"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"

# Key references cosign resolves itself (no file to check); `env://` names an environment variable.
KEY_SCHEMES = ("env://", "awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://", "pkcs11:")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What may follow a scheme: URI characters only (no space, quote or control character), bounded.
_REF_REST = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,1000}\Z")
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
# A signing config with no transparency log and no timestamp authority: cosign 3's offline key signing.
NO_TLOG_SIGNING_CONFIG = {
    "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
    "rekorTlogConfig": {},
    "tsaConfig": {},
}


class SigningError(ReleaseError):
    """An image could not be signed, or its signature does not verify."""


@dataclass(frozen=True)
class Cosign:
    """One cosign binary and the major version whose flags it takes."""

    path: str
    major: int
    version: str  # as reported ("v2.5.0"), or "devel (cosign 3 flags)" when only the flags told

    def sign_args(self, key: str | None, ref: str, signing_config: Path | None = None) -> list[str]:
        """cosign's arguments to sign ``ref``: with ``key`` offline (cosign 2: ``--tlog-upload=false``,
        cosign 3: ``signing_config``, a config without tlog), or keyless when ``key`` is None."""
        if key is None:
            return [self.path, "sign", "--yes", ref]
        if self.major >= 3:
            if signing_config is None:
                raise SigningError(
                    "cosign 3 needs a signing config without a transparency log to sign offline."
                )
            return [self.path, "sign", "--key", key, "--signing-config", str(signing_config), "--yes", ref]
        return [self.path, "sign", "--key", key, "--tlog-upload=false", "--yes", ref]

    def verify_args(self, key: str | None, ref: str, identity: Identity | None = None) -> list[str]:
        """cosign's arguments to verify ``ref``: with a public key and no tlog (both versions take
        ``--insecure-ignore-tlog``), or keyless against a certificate identity and OIDC issuer."""
        if key is not None:
            return [self.path, "verify", "--key", key, "--insecure-ignore-tlog", ref]
        if identity is None:
            raise SigningError("Keyless verification needs the signer's identity and OIDC issuer.")
        flag = "--certificate-identity-regexp" if identity.regexp else "--certificate-identity"
        return [
            self.path,
            "verify",
            flag,
            identity.identity,
            "--certificate-oidc-issuer",
            identity.issuer,
            ref,
        ]

    def signature_ref(self, ref: str) -> str:
        """Where this cosign stores the signature of ``ref`` on a registry without the OCI referrers API:
        cosign 2 the tag ``sha256-hex.sig``, cosign 3 (bundle format) the referrers tag ``sha256-hex``."""
        return signature_ref(ref) if self.major < 3 else signature_ref(ref).removesuffix(".sig")


@dataclass(frozen=True)
class Identity:
    """Who must have signed, for keyless verification: a certificate identity (or a regexp) and issuer."""

    identity: str
    issuer: str
    regexp: bool = False

    @classmethod
    def from_env(cls) -> Identity:
        """From EDGE_COSIGN_IDENTITY (or EDGE_COSIGN_IDENTITY_REGEXP) and EDGE_COSIGN_OIDC_ISSUER (default:
        GitHub Actions' issuer)."""
        exact, pattern = os.environ.get(IDENTITY_ENV, ""), os.environ.get(IDENTITY_REGEXP_ENV, "")
        if not exact and not pattern:
            raise SigningError(
                f"Keyless verification needs the signer's identity: set {IDENTITY_ENV} (the workflow, e.g. "
                "https://github.com/OWNER/REPO/.github/workflows/release.yml@refs/tags/v1.0.0) "
                f"or {IDENTITY_REGEXP_ENV}."
            )
        issuer = os.environ.get(ISSUER_ENV) or GITHUB_ISSUER
        for name, value in ((IDENTITY_ENV, exact), (IDENTITY_REGEXP_ENV, pattern), (ISSUER_ENV, issuer)):
            if value and (len(value) > 1000 or not value.isprintable()):
                raise SigningError(f"{name} holds a character that is not printable, or is too long.")
        return cls(identity=exact or pattern, issuer=issuer, regexp=not exact)


def _cosign_path() -> str:
    path = shutil.which(COSIGN)
    if path is None:
        raise SigningError("cosign is not installed (run scripts/host-setup, or put cosign on PATH).")
    return path


def cosign() -> Cosign:
    """The cosign on PATH (or EDGE_COSIGN) and its major version."""
    return detect(_cosign_path())


@functools.lru_cache(maxsize=8)
def detect(path: str) -> Cosign:
    """Ask ``path`` for its version; a build that says ``devel`` is judged by the flags it offers."""
    proc = _run([path, "version", "--json"])
    reported = ""
    if proc.returncode == 0:
        try:
            reported = str(json.loads(proc.stdout).get("gitVersion", ""))
        except (json.JSONDecodeError, AttributeError):
            reported = ""
    if not reported:
        match = re.search(r"GitVersion:\s*(\S+)", _run([path, "version"]).stdout or "")
        reported = match.group(1) if match else ""
    parsed = _VERSION.match(reported)
    if parsed:
        return Cosign(path, int(parsed.group(1)), reported)
    return Cosign(path, *_major_from_flags(path, reported or "unknown"))


def _major_from_flags(path: str, reported: str) -> tuple[int, str]:
    """cosign 3 signs through a signing config by default (``--use-signing-config=true``); cosign 2 does not
    (2.6 has the flag, off; 2.5 and older lack it) and still takes ``--tlog-upload``."""
    proc = _run([path, "sign", "--help"])
    text = (proc.stdout or "") + (proc.stderr or "")
    if "--use-signing-config=true" in text:
        return 3, f"{reported} (cosign 3 flags)"
    if "--tlog-upload" in text:
        return 2, f"{reported} (cosign 2 flags)"
    raise SigningError(
        f"{path} does not look like cosign 2 or 3 (its help for signing lists neither set of flags)."
    )


def key_reference(key: Path | str) -> str:
    """The key as cosign takes it: a file that must exist, or a reference cosign resolves (``env://VAR``,
    ``awskms://``, ``gcpkms://``, ``azurekms://``, ``hashivault://``, ``k8s://``, ``pkcs11:``), checked for
    shape only. A ``Path`` made from ``env://VAR`` reads ``env:/VAR``: that is taken back."""
    text = str(key)
    if text.startswith("env:/") and not text.startswith("env://"):
        text = "env://" + text.removeprefix("env:/")
    scheme = next((s for s in KEY_SCHEMES if text.startswith(s)), None)
    if scheme is None:
        if any(text.startswith(s.split(":")[0] + ":") for s in KEY_SCHEMES):
            raise SigningError(
                f"Key reference {text!r} is malformed: write it as one of {', '.join(KEY_SCHEMES)}…"
            )
        if not Path(text).is_file():
            raise SigningError(
                f"Signing key {text} does not exist (create one with `cosign generate-key-pair`)."
            )
        return text
    rest = text.removeprefix(scheme)
    if scheme == "env://":
        if not _ENV_NAME.match(rest):
            raise SigningError(f"Key reference {text!r} does not name an environment variable (env://NAME).")
        if not os.environ.get(rest):
            raise SigningError(
                f"Key reference {text} names the environment variable {rest}, which is not set."
            )
    elif not _REF_REST.match(rest):
        raise SigningError(f"Key reference {text!r} is empty or holds a character a {scheme} URI cannot.")
    return text


def _needs_password(key: str) -> bool:
    """Key files and ``env://`` keys are encrypted cosign keys; KMS and PKCS#11 keys never leave their store."""
    return not any(key.startswith(s) for s in KEY_SCHEMES) or key.startswith("env://")


def _require_digest(ref: str) -> None:
    if "@sha256:" not in ref:
        raise SigningError(f"Image reference {ref!r} is not pinned by digest (repository@sha256:…).")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", " ".join(args))
    try:
        return subprocess.run(args, text=True, capture_output=True, env=env, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SigningError(f"cosign did not finish within {TIMEOUT_S} s.") from None
    except OSError as exc:
        raise SigningError(f"cosign could not be started ({args[0]}): {exc.strerror or exc}.") from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("error during command execution")] or lines
    return lines[-1].removeprefix("Error: ").strip() if lines else f"exit {proc.returncode}"


def generate_key_pair(directory: Path, password: str) -> tuple[Path, Path]:
    """Write ``cosign.key`` (encrypted with ``password``) and ``cosign.pub`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COSIGN_PASSWORD": password}
    proc = _run([_cosign_path(), "generate-key-pair", "--output-key-prefix", str(directory / "cosign")], env)
    if proc.returncode != 0:
        raise SigningError(f"cosign could not generate a key pair in {directory}: {_last_line(proc)}.")
    return directory / "cosign.key", directory / "cosign.pub"


def _key_env(key_ref: str, password: str | None) -> dict[str, str]:
    """cosign's environment for signing with ``key_ref``: an encrypted key needs COSIGN_PASSWORD (given,
    or already in the environment), and its absence is said before cosign would prompt for it."""
    env = dict(os.environ)
    if _needs_password(key_ref):
        pw = password if password is not None else os.environ.get("COSIGN_PASSWORD")
        if pw is None:
            raise SigningError(
                f"COSIGN_PASSWORD is not set; it is needed to decrypt the signing key {key_ref}."
            )
        env["COSIGN_PASSWORD"] = pw
    return env


def sign_image(ref: str, key: Path | str, *, password: str | None = None) -> str:
    """Sign ``repository@digest`` with ``key`` (a file, a key reference, or ``keyless``); return where the
    signature is stored (``repo:sha256-….sig`` with cosign 2)."""
    _require_digest(ref)
    if str(key) == KEYLESS:
        return sign_keyless(ref)
    key_ref = key_reference(key)
    env = _key_env(key_ref, password)
    tool = cosign()
    with tempfile.TemporaryDirectory(prefix="edge-cosign-") as tmp:
        config = Path(tmp) / "signing-config.json"
        config.write_text(json.dumps(NO_TLOG_SIGNING_CONFIG))
        proc = _run(tool.sign_args(key_ref, ref, config), env)
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        if "decrypt" in text:
            raise SigningError(f"Signing key {key_ref} could not be decrypted: COSIGN_PASSWORD is wrong.")
        raise SigningError(f"cosign could not sign {ref}: {_last_line(proc)}.")
    return tool.signature_ref(ref)


def sign_keyless(ref: str) -> str:
    """Sign with the ambient OIDC identity (GitHub Actions with ``id-token: write``): a short-lived Fulcio
    certificate, the signature recorded in Rekor. Needs the public Sigstore services; not exercised here."""
    _require_digest(ref)
    tool = cosign()
    proc = _run(tool.sign_args(None, ref))
    if proc.returncode != 0:
        raise SigningError(
            f"cosign could not sign {ref} keyless (it needs an OIDC identity, e.g. a GitHub Actions job "
            f"with `id-token: write`, and the public Sigstore services): {_last_line(proc)}."
        )
    return tool.signature_ref(ref)


def signature_ref(ref: str) -> str:
    """Where cosign 2 stores the signature of ``repository@sha256:hex``: tag ``sha256-hex.sig``."""
    _require_digest(ref)
    repo, _, digest = ref.partition("@")
    return f"{repo}:{digest.replace(':', '-')}.sig"


def verify_image(ref_with_digest: str, public_key: Path | str, identity: Identity | None = None) -> None:
    """Raise SigningError unless ``repository@digest`` carries a valid signature for ``public_key`` (a file
    or key reference), or, with ``keyless``, a certificate for ``identity`` (default: from the environment)."""
    _require_digest(ref_with_digest)
    keyless = str(public_key) == KEYLESS
    if keyless:
        who = identity or Identity.from_env()
        key_ref = None
        subject = f"identity {who.identity} (issuer {who.issuer})"
    else:
        who = None
        text = str(public_key)
        if not any(text.startswith(s.split(":")[0] + ":") for s in KEY_SCHEMES) and not Path(text).is_file():
            raise SigningError(f"Public key {text} does not exist.")
        key_ref = key_reference(public_key)
        subject = key_ref
    proc = _run(cosign().verify_args(key_ref, ref_with_digest, who))
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        if "no signatures found" in text or "no matching signatures" in text:
            raise SigningError(f"Image {ref_with_digest} has no signature that {subject} verifies.")
        raise SigningError(
            f"Signature of {ref_with_digest} does not verify with {subject}: {_last_line(proc)}."
        )


# --- Blob signatures: a development release (``edge-deploy deploy``) lives in the host's image store, not in
# a registry, so its image is signed as a file: the bytes of its manifest (or index), whose sha256 *is* the
# image digest the robot pulls. The signature sits beside the release record; verification is offline.


def sign_blob_args(tool: Cosign, key: str, blob: Path, out: Path, signing_config: Path) -> list[str]:
    """cosign's arguments to sign the file ``blob`` with ``key`` offline, the signature written to ``out``:
    cosign 2 a base64 signature (``--tlog-upload=false``), cosign 3 a bundle (a config without tlog); both are
    exercised (tests/build/test_direct_signing.py runs each test with cosign 2 and cosign 3)."""
    if tool.major >= 3:
        return [
            tool.path,
            "sign-blob",
            "--key",
            key,
            "--signing-config",
            str(signing_config),
            "--bundle",
            str(out),
            "--yes",
            str(blob),
        ]
    return [
        tool.path,
        "sign-blob",
        "--key",
        key,
        "--tlog-upload=false",
        "--output-signature",
        str(out),
        "--yes",
        str(blob),
    ]


def verify_blob_args(tool: Cosign, public_key: str, blob: Path, signature: Path) -> list[str]:
    """cosign's arguments to verify ``blob`` against ``signature`` (cosign 2: the signature, cosign 3: the
    bundle ``sign_blob_args`` wrote) with ``public_key``, no transparency log."""
    flag = "--bundle" if tool.major >= 3 else "--signature"
    return [
        tool.path,
        "verify-blob",
        "--key",
        public_key,
        flag,
        str(signature),
        "--insecure-ignore-tlog",
        str(blob),
    ]


def sign_blob(blob: Path, key: Path | str, out: Path, *, password: str | None = None) -> Path:
    """Sign the file ``blob`` with ``key`` (a file or key reference; not keyless) into ``out``."""
    if str(key) == KEYLESS:
        raise SigningError(
            "A development release is signed with a key (a file or key reference), not keyless: keyless "
            "signing needs a CI job's OIDC identity and the public Sigstore services."
        )
    key_ref = key_reference(key)
    env = _key_env(key_ref, password)
    tool = cosign()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-cosign-") as tmp:
        config = Path(tmp) / "signing-config.json"
        config.write_text(json.dumps(NO_TLOG_SIGNING_CONFIG))
        proc = _run(sign_blob_args(tool, key_ref, blob, out, config), env)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        text = (proc.stderr or "") + (proc.stdout or "")
        if "decrypt" in text:
            raise SigningError(f"Signing key {key_ref} could not be decrypted: COSIGN_PASSWORD is wrong.")
        raise SigningError(f"cosign could not sign {blob}: {_last_line(proc)}.")
    return out


def verify_blob(blob: Path, public_key: Path | str, signature: Path, what: str | None = None) -> None:
    """Raise SigningError unless ``signature`` is a valid signature of the file ``blob`` for
    ``public_key``; ``what`` names the blob in the sentence (default: its path)."""
    subject = what or str(blob)
    text = str(public_key)
    if text == KEYLESS:
        raise SigningError(f"{subject} is signed with a key; verify it with a public key, not keyless.")
    if not any(text.startswith(s.split(":")[0] + ":") for s in KEY_SCHEMES) and not Path(text).is_file():
        raise SigningError(f"Public key {text} does not exist.")
    key_ref = key_reference(public_key)
    if not signature.is_file():
        raise SigningError(f"{subject} has no signature ({signature} does not exist).")
    proc = _run(verify_blob_args(cosign(), key_ref, blob, signature))
    if proc.returncode != 0:
        raise SigningError(f"Signature of {subject} does not verify with {key_ref}: {_last_line(proc)}.")
