"""``edge-deploy release create|list|show|verify|promote`` argument handling and error sentences (no registry needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_deploy.release.manifest import ReleaseImage, ReleaseManifest, save_release
from tests.build.cli_helpers import run_cli


@pytest.fixture()
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _manifest(version: str) -> ReleaseManifest:
    img = ReleaseImage(
        "localhost:5000/edge-deploy/runtime", "sha256:" + "a" * 64, {"linux/arm64": "sha256:" + "b" * 64}
    )
    return ReleaseManifest(
        version=version,
        git_sha="c" * 40,
        created="2026-11-25T00:00:00Z",
        images={"runtime": img},
        bundle_sha256="d" * 64,
        precision="fp16",
        base_image="l4t",
        channels=["stable"],
    )


def test_non_semver_version_is_one_error_line(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "release", "notsemver", "--no-sign")
    assert code != 0
    assert "error: Version 'notsemver' is not a semantic version" in err and "Traceback" not in err


def test_push_without_key_is_a_usage_error(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "release", "0.1.0")
    assert code == 2 and "No signing key" in err


def test_list_and_show(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "release", "list")
    assert code == 0 and "no releases" in out
    for v in ("0.10.0", "0.2.0", "0.2.0-rc.1"):
        save_release(_manifest(v), checkout / "releases")
    code, out, _ = run_cli(capsys, "release", "list", "--json")
    assert code == 0
    assert [r["version"] for r in json.loads(out)] == ["0.2.0-rc.1", "0.2.0", "0.10.0"]  # semver order
    code, out, _ = run_cli(capsys, "release", "show", "v0.2.0")
    assert code == 0 and json.loads(out)["images"]["runtime"]["digest"] == "sha256:" + "a" * 64


def test_unknown_version_for_show_verify_promote(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["release", "show", "9.9.9"],
        ["release", "verify", "9.9.9"],
        ["release", "promote", "9.9.9", "--channel", "stable"],
    ):
        code, _, err = run_cli(capsys, *args)
        assert code != 0 and "error: Release 9.9.9 is unknown" in err, args


def test_promote_needs_a_known_channel(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "release", "promote", "0.1.0", "--channel", "Nightly")
    assert code == 2 and "Nightly" in err


def test_dry_run_prints_the_tag_plan(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
    )
    save_release(_manifest("0.2.0"), checkout / "releases")
    code, out, err = run_cli(
        capsys,
        "release",
        "0.1.1",
        "--no-push",
        "--json",
        "--reuse",
        "converter=r@sha256:1",
        "--reuse",
        "runtime=r@sha256:2",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["tags"][0] == "0.1.1" and "0.1" in plan["tags"] and "latest" not in plan["tags"]


def test_image_options_are_checked_before_any_work(
    checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release` and `image build` share their image options: an unsupported platform or a calibration file
    outside the model's directory is a usage error before anything is built, in both commands."""
    model = checkout / "policy.pt"
    model.write_bytes(b"not built")
    outside = tmp_path.parent / "calib.npz"
    for cmd in (["release", "0.1.0", "--no-sign", "--model", str(model)], ["image", "build", str(model)]):
        code, _, err = run_cli(capsys, *cmd, "--platform", "linux/riscv64")
        assert code == 2 and "linux/riscv64" in err and "Traceback" not in err, cmd
        code, _, err = run_cli(capsys, *cmd, "--calibration", str(outside))
        assert code == 2 and "--calibration must be in the same directory as the model" in err, cmd
    code, _, err = run_cli(capsys, "release", "0.1.0", "--no-sign", "--calibration", str(outside))
    assert code == 2 and "--calibration needs --model" in err
