"""Signatures of development releases (``edge-deploy deploy``: no registry), with real cosign 2 and 3: the
image's manifest blob in the host's store is signed beside the local release record, and verified with the
fleet's public key before any robot is touched; an unsigned release with a configured public key, a wrong
key, a tampered signature and a tampered store are each refused in one sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.direct import (
    LOCAL_REPOSITORY,
    deploy_direct,
    record_release,
    signature_path,
    target_robot,
)
from edge_deploy.fleet.inventory import Fleet
from edge_deploy.fleet.operations import deploy_release, verify_release
from edge_deploy.fleet.options import RolloutOptions
from edge_deploy.fleet.transport import ImageStore
from edge_deploy.images.result import BuildResult
from edge_deploy.release.manifest import load_release
from edge_deploy.release.signing import SigningError, generate_key_pair, sign_blob
from tests.build.test_signing import PASSWORD, cosign_bin
from tests.build.test_transport import write_layout

__all__ = ["cosign_bin"]  # the fixture, parametrized over cosign 2 and cosign 3


def _build(bundle: str = "ab" * 32) -> BuildResult:
    """What a build reports, for the release record (the build itself runs in tests/e2e)."""
    return BuildResult(
        images={},
        bundle_sha256=bundle,
        precision="fp16",
        ros2=False,
        variables={"GIT_SHA": "0123456789ab", "L4T_BASE": "l4t-standin"},
    )


@pytest.fixture
def dev(tmp_path: Path) -> dict[str, Any]:
    """A host store holding one image (as the build writes it) and where releases are recorded."""
    ds = write_layout(tmp_path / "layout", [b"base layer " * 1000, b"model layer"])
    store = tmp_path / "store"
    assert ImageStore(store).add_layout(tmp_path / "layout") == ds["index"]
    return {"store": store, "releases": tmp_path / "releases", "ref": f"{LOCAL_REPOSITORY}@{ds['index']}"}


@pytest.fixture
def keys(tmp_path: Path, cosign_bin: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    return generate_key_pair(tmp_path / "keys", PASSWORD)


def _check(dev: dict[str, Any], version: str, pub: Path) -> None:
    verify_release(load_release(version, dev["releases"]), pub, dev["releases"], dev["store"])


def test_signed_dev_release_verifies_with_the_public_key_only(
    dev: dict[str, Any], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, pub = keys
    version = record_release(dev["ref"], _build(), dev["releases"], store=dev["store"], sign_key=key)
    manifest = load_release(version, dev["releases"])
    sig = signature_path(version, dev["releases"])
    assert sig.is_file() and sig.parent == dev["releases"]
    assert manifest.runtime.signature == sig.name and manifest.extra["signature_blob"] == sig.name
    _check(dev, version, pub)  # verifies

    _, other = generate_key_pair(tmp_path / "other", PASSWORD)
    with pytest.raises(SigningError, match=rf"^Signature of image .* of release {version} does not verify"):
        _check(dev, version, other)

    good = sig.read_bytes()
    other_blob = tmp_path / "other-manifest.json"
    other_blob.write_bytes(b'{"schemaVersion": 2}')
    sign_blob(other_blob, key, sig)  # a valid signature by the right key, of something else
    with pytest.raises(SigningError, match="does not verify"):
        _check(dev, version, pub)
    sig.write_bytes(good)
    _check(dev, version, pub)

    blob = ImageStore(dev["store"]).blob(dev["ref"].partition("@")[2])
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b" ")  # the store no longer holds what was signed
    with pytest.raises(FleetError, match="corrupted manifest"):
        _check(dev, version, pub)


def test_unsigned_dev_release_with_a_public_key_is_refused_before_any_robot(
    dev: dict[str, Any], keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pub = keys
    version = record_release(dev["ref"], _build(), dev["releases"], store=dev["store"])
    assert load_release(version, dev["releases"]).runtime.signature is None
    assert not signature_path(version, dev["releases"]).exists()

    touched: list[str] = []

    async def run(self: object) -> None:
        touched.append("robot")

    monkeypatch.setattr("edge_deploy.fleet.rollout.Rollout.run", run)
    robot = target_robot("127.0.0.1", user="robot", port=1)
    opts = RolloutOptions(
        version=version,
        public_key=pub,
        transport="ssh-copy",
        image_store=dev["store"],
        releases_dir=dev["releases"],
    )
    with pytest.raises(FleetError) as err:
        deploy_release(Fleet(name="one", robots=(robot,)), opts)
    text = str(err.value)
    assert text.startswith(f"Release {version} is a local development build with no signature")
    assert "insecure_skip_signature_check" in text and "\n" not in text
    assert touched == []


def test_direct_deploy_with_a_public_key_and_no_signing_key_stops_before_building(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pub = keys
    monkeypatch.delenv("EDGE_COSIGN_KEY", raising=False)
    model = tmp_path / "policy.onnx"
    model.write_bytes(b"onnx")

    def builder(**_: Any) -> BuildResult:
        raise AssertionError("nothing is built for a deploy that will be refused")

    robot = target_robot("127.0.0.1", user="robot", port=1)
    with pytest.raises(FleetError, match=r"^A public key \(.*\) is configured to verify releases"):
        deploy_direct(model, robot, work=tmp_path / "work", builder=builder, public_key=pub)
    monkeypatch.setenv("EDGE_COSIGN_PUB", str(pub))  # as `release verify` takes it
    with pytest.raises(FleetError, match="would make an unsigned one"):
        deploy_direct(model, robot, work=tmp_path / "work", builder=builder)


def test_cli_refuses_an_unsigned_deploy_under_a_public_key_in_one_sentence(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.build.cli_helpers import run_cli

    _, pub = keys
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_FLEET", raising=False)
    monkeypatch.delenv("EDGE_COSIGN_KEY", raising=False)
    (tmp_path / "policy.onnx").write_bytes(b"onnx")
    args = ["deploy", "--to", "robot@127.0.0.1", "--port", "1", "--public-key", str(pub), "policy.onnx"]
    code, _, err = run_cli(capsys, *args)
    assert code != 0 and "would make an unsigned one" in err, err
    assert "Traceback" not in err
    code, _, err = run_cli(capsys, *args, "--sign-key", str(tmp_path / "absent.key"))
    assert code != 0 and "absent.key does not exist" in err, err
