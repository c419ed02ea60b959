"""Release manifests and versions are checked before they are trusted: a malformed manifest is one
sentence naming the file, and a version is a semantic version everywhere it becomes a path (on this host,
``releases/<VERSION>.json``; on a robot, ``releases/<VERSION>/``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from edge_deploy.release.manifest import (
    ReleaseError,
    ReleaseManifest,
    list_releases,
    load_release,
    save_release,
)
from edge_runtime.errors import EdgeError
from tests.build.cli_helpers import run_cli

DIGEST = "sha256:" + "c" * 64


def good() -> dict:
    return ReleaseManifest.for_runtime_image("0.1.0", f"localhost:5000/edge/runtime@{DIGEST}").to_dict()


def with_(**changes: object) -> bytes:
    return json.dumps({**good(), **changes}).encode()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"{", "not valid JSON"),
        (with_(images=[]), "'images'"),
        (with_(images={}), "runtime"),
        (with_(images={"runtime": "localhost:5000/edge/runtime"}), "'runtime'"),
        (with_(images={"runtime": {"repository": 5, "digest": DIGEST}}), "'repository'"),
        (with_(images={"runtime": {"repository": "r/x", "digest": DIGEST, "tags": "0.1.0"}}), "'tags'"),
        (with_(version="../.."), "'version'"),
        (with_(version=7), "'version'"),
        (with_(channels="stable"), "'channels'"),
        (with_(extra=[]), "'extra'"),
        (with_(schema_version=2), "schema version"),
        (with_(colour="red"), "'colour'"),
    ],
)
def test_malformed_manifests_are_one_sentence(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "0.1.0.json"
    path.write_bytes(content)
    with pytest.raises(ReleaseError) as info:
        load_release("0.1.0", tmp_path).runtime  # noqa: B018  (reading the runtime image is part of loading)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith("."), msg
    assert str(path) in msg and says in msg, msg


def test_a_manifest_whose_version_is_not_its_file_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0.1.0.json").write_bytes(with_(version="0.2.0"))
    with pytest.raises(ReleaseError, match=r"records version '0\.2\.0'"):
        load_release("0.1.0", tmp_path)


@pytest.mark.parametrize("version", ["../..", "../../etc/passwd", "0.1", "0.1.0/../../x", "", "0.1.0\n"])
def test_versions_are_checked_before_they_become_paths(tmp_path: Path, version: str) -> None:
    with pytest.raises(EdgeError, match="not a semantic version"):
        load_release(version, tmp_path)
    with pytest.raises(EdgeError, match="not a semantic version"):
        ReleaseManifest.for_runtime_image(version, f"r.example/x@{DIGEST}")


def test_the_good_manifest_still_round_trips(tmp_path: Path) -> None:
    m = ReleaseManifest.for_runtime_image("0.1.0-rc.1+b7", f"localhost:5000/edge/runtime@{DIGEST}")
    save_release(m, tmp_path)
    assert load_release("0.1.0-rc.1+b7", tmp_path) == m
    assert [r.version for r in list_releases(tmp_path)] == ["0.1.0-rc.1+b7"]


# --- the CLI: exit 2 and one line ------------------------------------------------------------------------


def unreachable_fleet(tmp_path: Path) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "kh").write_text("")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"robots: [{{name: r1, host: 127.0.0.1, port: {port}, known_hosts: kh, connect_timeout_s: 2}}]\n"
    )
    return fleet


@pytest.mark.parametrize("content", [b"[]", with_(images=[]), b"\xff\xfe"])
def test_rollout_of_a_malformed_manifest_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    fleet = unreachable_fleet(tmp_path)
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "0.1.0.json").write_bytes(content)
    code, _, err = run_cli(
        capsys, "fleet", "rollout", "0.1.0", "--fleet", fleet, "--releases-dir", tmp_path / "releases"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    code, _, err = run_cli(capsys, "release", "list", "--releases-dir", tmp_path / "releases")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "0.1.0.json" in err, err


@pytest.mark.parametrize(
    "command",
    [["fleet", "rollback", "--to", "../.."], ["fleet", "rollout", "../.."], ["fleet", "rollout", "1.0"]],
)
def test_a_version_that_is_not_semver_is_refused_before_any_robot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    fleet = unreachable_fleet(tmp_path)
    code, out, err = run_cli(capsys, *command, "--fleet", fleet, "--json")
    assert code == 2 and out == "", (out, err)
    assert (
        err.startswith("error: ") and "not a semantic version" in err and len(err.strip().splitlines()) == 1
    )


def test_a_non_utf8_fleet_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fleet.yaml").write_bytes(b"robots:\n  - name: r\xe9\n    host: h\n")
    code, _, err = run_cli(capsys, "fleet", "status", "--fleet", tmp_path / "fleet.yaml")
    assert code == 2 and err.startswith("error: ") and "UTF-8" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "repository", ["reg.example/x$(id)", "reg.example/x${HOME}", "reg.example/x#y", "reg/X"]
)
def test_an_image_reference_outside_the_reference_grammar_never_reaches_a_robot(
    tmp_path: Path, repository: str
) -> None:
    """The reference goes into each robot's .env, where compose expands "$" and "#" starts a comment."""
    from edge_deploy.fleet import FleetError, RolloutOptions, deploy_release

    fleet = unreachable_fleet(tmp_path)
    m = ReleaseManifest.for_runtime_image("0.1.0", f"{repository}@{DIGEST}")
    save_release(m, tmp_path / "releases")
    with pytest.raises(FleetError, match="does not pin its runtime image by digest"):
        options = RolloutOptions(
            version="0.1.0", releases_dir=tmp_path / "releases", insecure_skip_signature_check=True
        )
        deploy_release(fleet, options)
