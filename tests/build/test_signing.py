"""cosign 2 and 3 against the local registry (127.0.0.1:5000), for real: key-file and ``env://`` signing,
verification, a wrong key refused; plus version detection from the binary and the arguments each major
takes (keyless signing needs Sigstore's public services and an OIDC token: its arguments are checked here,
the signing itself is not exercised on our machines)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_deploy.release import signing
from edge_deploy.release.signing import (
    KEYLESS,
    Cosign,
    Identity,
    SigningError,
    detect,
    generate_key_pair,
    key_reference,
    sign_image,
    verify_image,
)
from tests.support import need

REGISTRY_ADDR = os.environ.get("EDGE_REGISTRY_ADDR", "127.0.0.1:5000")
REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
HOST_BIN = Path(os.environ.get("EDGE_HOST_BIN", "/opt/edge-deploy/host/bin"))
PASSWORD = "signing-test-password"
REF = "localhost:5000/edge/runtime@sha256:" + "ab" * 32


def _cosigns() -> dict[str, str | None]:
    """The cosign binaries host-setup provides: cosign 2 on PATH, cosign 3 beside it as cosign3."""
    import shutil

    candidates = [os.environ.get("EDGE_COSIGN3", ""), str(HOST_BIN / "cosign3")]
    three = next((c for c in candidates if c and Path(c).is_file()), None)
    return {"cosign2": shutil.which("cosign"), "cosign3": three}


@pytest.fixture(params=["cosign2", "cosign3"])
def cosign_bin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path = _cosigns()[request.param]
    need(path is not None, f"{request.param} (scripts/host-setup installs both)")
    assert path is not None
    want = int(request.param[-1])
    assert detect(path).major == want, f"{path} is not cosign {want}: {detect(path)}"
    monkeypatch.setattr(signing, "COSIGN", path)
    return path


def _registry_up() -> bool:
    try:
        return httpx.get(f"http://{REGISTRY_ADDR}/v2/", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def push_tiny_image(repo: str) -> str:
    """A one-config, no-layer OCI image pushed through the registry API; returns ``repo@digest``."""
    base = f"http://{REGISTRY_ADDR}/v2/{repo}"
    with httpx.Client(timeout=10) as client:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
                "config": {"Labels": {"nonce": secrets.token_hex(8)}},
            }
        ).encode()
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        start = client.post(f"{base}/blobs/uploads/")
        start.raise_for_status()
        loc = start.headers["location"]
        loc = loc if loc.startswith("http") else f"http://{REGISTRY_ADDR}{loc}"
        client.put(f"{loc}{'&' if '?' in loc else '?'}digest={digest}", content=config).raise_for_status()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        put = client.put(
            f"{base}/manifests/signing-test",
            content=manifest,
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )
        put.raise_for_status()
        return f"{REGISTRY}/{repo}@{put.headers['docker-content-digest']}"


def tags(repo: str) -> list[str]:
    return list(httpx.get(f"http://{REGISTRY_ADDR}/v2/{repo}/tags/list", timeout=5).json()["tags"])


@pytest.fixture
def keys(tmp_path: Path, cosign_bin: str) -> Iterator[tuple[Path, Path]]:
    yield generate_key_pair(tmp_path / "keys", PASSWORD)


@pytest.fixture
def image() -> str:
    need(_registry_up(), f"a registry on {REGISTRY_ADDR} (scripts/host-setup)")
    return push_tiny_image(f"edge-deploy-signing/{secrets.token_hex(4)}")


@pytest.mark.docker
def test_sign_and_verify_with_a_key_file(
    cosign_bin: str, keys: tuple[Path, Path], image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, pub = keys
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    stored = sign_image(image, key)
    repo = image.split("/", 1)[1].split("@")[0]
    assert stored.split(":")[-1] in tags(repo), f"{stored} not among {tags(repo)}"
    expected_tag = image.split("@")[1].replace(":", "-") + (".sig" if detect(cosign_bin).major == 2 else "")
    assert stored.endswith(":" + expected_tag)
    verify_image(image, pub)

    _, other_pub = generate_key_pair(key.parent / "other", PASSWORD)
    with pytest.raises(SigningError, match=r"no signature that .* verifies|does not verify"):
        verify_image(image, other_pub)
    unsigned = push_tiny_image(repo)
    with pytest.raises(SigningError, match="has no signature"):
        verify_image(unsigned, pub)


@pytest.mark.docker
def test_sign_with_an_env_key_reference(
    cosign_bin: str, keys: tuple[Path, Path], image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, pub = keys
    monkeypatch.setenv("EDGE_TEST_COSIGN_KEY", key.read_text())
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    sign_image(image, "env://EDGE_TEST_COSIGN_KEY")
    verify_image(image, pub)
    # click hands the CLI's --key over as a Path, which folds `//`: env:/NAME is taken back as env://NAME.
    assert key_reference(Path("env://EDGE_TEST_COSIGN_KEY")) == "env://EDGE_TEST_COSIGN_KEY"


@pytest.mark.docker
def test_wrong_password_is_one_sentence(
    cosign_bin: str, keys: tuple[Path, Path], image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "not-the-password")
    with pytest.raises(SigningError, match="could not be decrypted: COSIGN_PASSWORD is wrong"):
        sign_image(image, keys[0])
    monkeypatch.delenv("COSIGN_PASSWORD")
    with pytest.raises(SigningError, match="COSIGN_PASSWORD is not set"):
        sign_image(image, keys[0])


@pytest.mark.docker
def test_cosign3_verifies_what_cosign2_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet whose hosts move to cosign 3 still verifies releases signed with cosign 2."""
    found = _cosigns()
    need(all(found.values()), "cosign 2 and cosign 3 (scripts/host-setup installs both)")
    need(_registry_up(), f"a registry on {REGISTRY_ADDR} (scripts/host-setup)")
    image = push_tiny_image(f"edge-deploy-signing/{secrets.token_hex(4)}")
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    monkeypatch.setattr(signing, "COSIGN", found["cosign2"])
    key, pub = generate_key_pair(tmp_path, PASSWORD)
    sign_image(image, key)
    monkeypatch.setattr(signing, "COSIGN", found["cosign3"])
    verify_image(image, pub)


def _fake_cosign(tmp_path: Path, version_json: str, sign_help: str) -> str:
    """A script that answers like a cosign build: what detection reads, nothing else."""
    script = tmp_path / f"cosign-{secrets.token_hex(3)}"
    (tmp_path / "version.json").write_text(version_json)
    (tmp_path / "sign-help.txt").write_text(sign_help)
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = version ]; then cat {tmp_path}/version.json; exit 0; fi\n'
        f'if [ "$1" = sign ] && [ "$2" = --help ]; then cat {tmp_path}/sign-help.txt; exit 0; fi\n'
        "exit 9\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(
    ("version", "help_text", "major"),
    [
        ('{"gitVersion": "v2.4.1"}', "", 2),
        ('{"gitVersion": "v3.0.2"}', "", 3),
        ('{"gitVersion": "devel"}', "    --tlog-upload=true:\n", 2),
        ('{"gitVersion": "devel"}', "    --tlog-upload=true:\n    --use-signing-config=false:\n", 2),  # 2.6
        ('{"gitVersion": "devel"}', "    --tlog-upload=true:\n    --use-signing-config=true:\n", 3),
    ],
)
def test_version_detection(tmp_path: Path, version: str, help_text: str, major: int) -> None:
    assert detect(_fake_cosign(tmp_path, version, help_text)).major == major


def test_unknown_binary_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="does not look like cosign 2 or 3"):
        detect(_fake_cosign(tmp_path, '{"gitVersion": "devel"}', "usage: something else\n"))


def test_the_installed_cosigns_are_told_apart() -> None:
    """Debian's builds both say `devel`: the flags decide, and must say 2 and 3."""
    found = _cosigns()
    need(all(found.values()), "cosign 2 and cosign 3 (scripts/host-setup installs both)")
    assert [detect(str(p)).major for p in found.values()] == [2, 3]


def test_arguments_per_major(tmp_path: Path) -> None:
    two, three = Cosign("cosign", 2, "v2.5.0"), Cosign("cosign", 3, "v3.1.1")
    config = tmp_path / "sc.json"
    assert two.sign_args("k.key", REF, config) == [
        "cosign",
        "sign",
        "--key",
        "k.key",
        "--tlog-upload=false",
        "--yes",
        REF,
    ]
    assert three.sign_args("k.key", REF, config) == [
        "cosign",
        "sign",
        "--key",
        "k.key",
        "--signing-config",
        str(config),
        "--yes",
        REF,
    ]
    assert "--tlog-upload=false" not in three.sign_args("awskms:///alias/edge", REF, config)
    with pytest.raises(SigningError, match="signing config"):
        three.sign_args("k.key", REF, None)
    for tool in (two, three):
        assert tool.verify_args("k.pub", REF) == [
            "cosign",
            "verify",
            "--key",
            "k.pub",
            "--insecure-ignore-tlog",
            REF,
        ]
        assert tool.sign_args(None, REF) == ["cosign", "sign", "--yes", REF]  # keyless: ambient OIDC token
        who = Identity(
            "https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1.0.0", signing.GITHUB_ISSUER
        )
        assert tool.verify_args(None, REF, who) == [
            "cosign",
            "verify",
            "--certificate-identity",
            who.identity,
            "--certificate-oidc-issuer",
            signing.GITHUB_ISSUER,
            REF,
        ]
    assert two.signature_ref(REF).endswith(":sha256-" + "ab" * 32 + ".sig")
    assert three.signature_ref(REF).endswith(":sha256-" + "ab" * 32)


def test_keyless_identity_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (signing.IDENTITY_ENV, signing.IDENTITY_REGEXP_ENV, signing.ISSUER_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SigningError, match="needs the signer's identity"):
        verify_image(REF, KEYLESS)
    monkeypatch.setenv(signing.IDENTITY_REGEXP_ENV, r"^https://github\.com/o/r/")
    who = Identity.from_env()
    assert (who.identity, who.issuer, who.regexp) == (
        r"^https://github\.com/o/r/",
        signing.GITHUB_ISSUER,
        True,
    )
    assert Cosign("cosign", 3, "v3").verify_args(None, REF, who)[2] == "--certificate-identity-regexp"


@pytest.mark.parametrize(
    "ref",
    [
        "awskms:///arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "awskms://localhost:4566/alias/edge",
        "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/versions/1",
        "azurekms://vault.example.net/edge-key",
        "hashivault://edge-release",
        "k8s://edge-system/cosign",
        "pkcs11:token=edge;slot-id=0;object=release?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234",
    ],
)
def test_kms_references_are_taken_without_a_file(ref: str) -> None:
    assert key_reference(ref) == ref


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("env://", "does not name an environment variable"),
        ("env://NOT A NAME", "does not name an environment variable"),
        ("env://EDGE_TEST_UNSET_KEY_VAR", "which is not set"),
        ("awskms://", "is empty or holds a character"),
        ("hashivault://key name", "is empty or holds a character"),
        ("gcpkms://k\n--key=x", "is empty or holds a character"),
        ("awskms:/only-one-slash", "is malformed"),
        ("/nonexistent/cosign.key", "does not exist"),
    ],
)
def test_bad_key_references_are_one_sentence(ref: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_TEST_UNSET_KEY_VAR", raising=False)
    with pytest.raises(SigningError, match=message):
        key_reference(ref)


def test_digest_required_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "COSIGN", "/nonexistent/cosign")
    with pytest.raises(SigningError, match="not pinned by digest"):
        sign_image("localhost:5000/edge/runtime:1.0.0", KEYLESS)
    with pytest.raises(SigningError, match="cosign is not installed"):
        sign_image(REF, "awskms:///alias/edge")


def test_the_cli_key_option_keeps_references_whole() -> None:
    """`release create --key awskms:///…`: the option hands the reference over unfolded (a Path would make
    it awskms:/…, another key)."""
    import click
    from click.testing import CliRunner

    from edge_deploy.cli.options import signing_key_option

    @click.command()
    @signing_key_option()
    def show(key: str | None) -> None:
        click.echo(key_reference(key) if key and key != KEYLESS else key)

    for ref in ("awskms:///arn:aws:kms:us-east-1:111122223333:key/k", "hashivault://edge", KEYLESS):
        result = CliRunner().invoke(show, ["--key", ref])
        assert (result.exit_code, result.output.strip()) == (0, ref)
