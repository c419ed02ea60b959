"""Signatures by default: a rollout verifies the image signature with the configured public key, and
without one it is refused before any robot is touched, unless the operator opts out with
``insecure_skip_signature_check`` (``--insecure-skip-signature-check`` on the CLI). Robots here refuse connections, so "touched" is visible as an
``unreachable`` result."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

import edge_deploy.fleet.operations as operations
from edge_deploy.fleet import FleetError, RolloutOptions, RolloutResult
from edge_deploy.fleet.inventory import Fleet, Robot
from edge_deploy.release.manifest import ReleaseManifest, save_release
from tests.build.cli_helpers import run_cli

REF = "localhost:5000/edge/runtime@sha256:" + "d" * 64
OPT_OUT = "--insecure-skip-signature-check"


def deploy_release(version: str, fleet: Fleet, **options: Any) -> RolloutResult:
    return operations.deploy_release(fleet, RolloutOptions(version=version, **options))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def releases(tmp_path: Path) -> Path:
    d = tmp_path / "releases"
    signed = ReleaseManifest.for_runtime_image("0.1.0", REF)
    signed.images["runtime"].signature = "localhost:5000/edge/runtime:sha256-" + "d" * 64 + ".sig"
    save_release(signed, d)
    save_release(ReleaseManifest.for_runtime_image("0.2.0", REF), d)  # released with --no-sign
    return d


def fleet(tmp_path: Path, public_key: Path | None = None) -> Fleet:
    (tmp_path / "kh").write_text("")
    robot = Robot(
        name="r1", host="127.0.0.1", port=closed_port(), known_hosts=tmp_path / "kh", connect_timeout_s=2
    )
    return Fleet("f", (robot,), public_key=public_key)


@pytest.mark.parametrize(("version", "says"), [("0.1.0", "is signed"), ("0.2.0", "records no signature")])
def test_no_public_key_is_refused_before_any_robot(
    tmp_path: Path, releases: Path, version: str, says: str
) -> None:
    with pytest.raises(FleetError) as info:
        deploy_release(version, fleet(tmp_path), releases_dir=releases)
    msg, err = str(info.value), info.value
    # The sentence names the options (the library's words; the CLI spells them as its flags).
    assert says in msg and "public key" in msg and "`insecure_skip_signature_check`" in msg, msg
    assert "--" not in msg and "\n" not in msg, msg
    assert set(err.options) == {"public_key", "insecure_skip_signature_check"}
    assert OPT_OUT in err.spelled({"insecure_skip_signature_check": OPT_OUT})


def test_the_opt_out_deploys_unverified_and_says_so(tmp_path: Path, releases: Path) -> None:
    out = deploy_release("0.1.0", fleet(tmp_path), releases_dir=releases, insecure_skip_signature_check=True)
    summary = out.to_dict()
    assert [r["outcome"] for r in summary["robots"]] == ["unreachable"]  # it went on to the robot
    assert summary["signature"] == "not checked (--insecure-skip-signature-check)"


def test_a_configured_key_verifies_the_pinned_digest(
    tmp_path: Path, releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Path]] = []
    monkeypatch.setattr(operations, "verify_signature", lambda ref, key: calls.append((ref, key)))
    key = tmp_path / "cosign.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    for version in ("0.1.0", "0.2.0"):  # an unsigned release is verified too (and cosign refuses it)
        out = deploy_release(version, fleet(tmp_path, public_key=key), releases_dir=releases).to_dict()
        assert out["signature"] == f"verified with {key}"
    assert calls == [(REF, key), (REF, key)]


def test_cli_refuses_without_a_key_and_opts_out_by_name(
    tmp_path: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    (tmp_path / "kh").write_text("")
    (tmp_path / "fleet.yaml").write_text(
        f"robots: [{{name: r1, host: 127.0.0.1, port: {port}, known_hosts: kh, connect_timeout_s: 2}}]\n"
    )
    args = ["rollout", "0.1.0", "--fleet", tmp_path / "fleet.yaml", "--releases-dir", releases, "--json"]
    code, out, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and out == "" and len(errors) == 1 and OPT_OUT in errors[0], err  # the CLI's flag
    code, out, err = run_cli(capsys, *args, OPT_OUT)
    assert code == 1, err  # the robot is unreachable: the rollout went ahead
    summary = json.loads(out)
    assert summary["signature"].startswith("not checked")
    assert [r["outcome"] for r in summary["robots"]] == ["unreachable"]
    assert "signature" in err.lower()  # the operator is told on stderr that nothing was verified
