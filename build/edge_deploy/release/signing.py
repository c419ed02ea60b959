"""Image signatures with cosign and a key pair; offline against our registry (no transparency log).

Signing reads ``COSIGN_PASSWORD`` from the environment (a CI secret); verification needs only the public
key. We always sign and verify ``repository@digest``: a tag can be moved, a digest cannot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from edge_deploy.release.manifest import ReleaseError

log = logging.getLogger(__name__)

COSIGN = os.environ.get("EDGE_COSIGN", "cosign")
TIMEOUT_S = 300


class SigningError(ReleaseError):
    """An image could not be signed, or its signature does not verify."""


def _cosign() -> str:
    path = shutil.which(COSIGN)
    if path is None:
        raise SigningError("cosign is not installed (run scripts/host-setup, or put cosign on PATH).")
    return path


def _require_digest(ref: str) -> None:
    if "@sha256:" not in ref:
        raise SigningError(f"Image reference {ref!r} is not pinned by digest (repository@sha256:…).")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", " ".join(args))
    try:
        return subprocess.run(args, text=True, capture_output=True, env=env, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SigningError(f"cosign did not finish within {TIMEOUT_S} s.") from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    return lines[-1].removeprefix("Error: ").strip() if lines else f"exit {proc.returncode}"


def generate_key_pair(directory: Path, password: str) -> tuple[Path, Path]:
    """Write ``cosign.key`` (encrypted with ``password``) and ``cosign.pub`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COSIGN_PASSWORD": password}
    proc = _run([_cosign(), "generate-key-pair", "--output-key-prefix", str(directory / "cosign")], env)
    if proc.returncode != 0:
        raise SigningError(f"cosign could not generate a key pair in {directory}: {_last_line(proc)}.")
    return directory / "cosign.key", directory / "cosign.pub"


def sign_image(ref: str, key: Path, *, password: str | None = None) -> str:
    """Sign ``repository@digest``; return the signature's reference (``repo:sha256-….sig``)."""
    _require_digest(ref)
    if not key.is_file():
        raise SigningError(f"Signing key {key} does not exist (create one with `cosign generate-key-pair`).")
    pw = password if password is not None else os.environ.get("COSIGN_PASSWORD")
    if pw is None:
        raise SigningError(f"COSIGN_PASSWORD is not set; it is needed to decrypt the signing key {key}.")
    env = {**os.environ, "COSIGN_PASSWORD": pw}
    proc = _run([_cosign(), "sign", "--key", str(key), "--tlog-upload=false", "--yes", ref], env)
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        if "decrypt" in text:
            raise SigningError(f"Signing key {key} could not be decrypted: COSIGN_PASSWORD is wrong.")
        raise SigningError(f"cosign could not sign {ref}: {_last_line(proc)}.")
    return signature_ref(ref)


def signature_ref(ref: str) -> str:
    """Where cosign stores the signature of ``repository@sha256:hex``: tag ``sha256-hex.sig``."""
    _require_digest(ref)
    repo, _, digest = ref.partition("@")
    return f"{repo}:{digest.replace(':', '-')}.sig"


def verify_image(ref_with_digest: str, public_key: Path) -> None:
    """Raise SigningError unless ``repository@digest`` carries a valid signature for ``public_key``."""
    _require_digest(ref_with_digest)
    if not public_key.is_file():
        raise SigningError(f"Public key {public_key} does not exist.")
    proc = _run([_cosign(), "verify", "--key", str(public_key), "--insecure-ignore-tlog", ref_with_digest])
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        if "no signatures found" in text or "no matching signatures" in text:
            raise SigningError(f"Image {ref_with_digest} has no signature that {public_key} verifies.")
        raise SigningError(
            f"Signature of {ref_with_digest} does not verify with {public_key}: {_last_line(proc)}."
        )
