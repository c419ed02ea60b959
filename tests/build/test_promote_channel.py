"""``edge-deploy release promote VERSION --channel NAME [--percent P]`` for real: the channel artifact is
published in the registry (127.0.0.1:5000 from scripts/host-setup) and signed with the cosign binary, then
read back as an agent does (``read_channel``, Python verification). An unsigned image is refused unless
named, a signing key that is not the fleet's leaves the channel as it was, and bad input is one sentence."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_deploy.release.channel import (
    ChannelError,
    ChannelMissing,
    ChannelRefused,
    promote_channel,
    read_channel,
)
from edge_deploy.release.manifest import ReleaseImage, load_release, save_release
from edge_deploy.release.registry import Registry, split_repository
from tests.build.channels import PASSWORD, key_pair, need_registry_and_cosign, push_image, release, sign
from tests.build.cli_helpers import run_cli

pytestmark = pytest.mark.docker


@dataclass
class Setup:
    repo: str  # REGISTRY/name
    key: Path
    pub: Path
    other_key: Path
    signed: ReleaseImage  # signed with key
    unsigned: ReleaseImage  # never signed
    releases: Path  # 1.0.0 (signed image), 1.1.0 (unsigned image)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_registry_and_cosign()
    root = tmp_path_factory.mktemp("promote")
    key, pub = key_pair(root / "fleet")
    other_key, _ = key_pair(root / "other")
    name = f"edge-deploy-promote/{secrets.token_hex(4)}"
    signed = push_image(name)
    sign(signed, key)
    unsigned = push_image(name)
    releases = root / "releases"
    save_release(release("1.0.0", signed), releases)
    save_release(release("1.1.0", unsigned), releases)
    yield Setup(signed.repository, key, pub, other_key, signed, unsigned, releases)


@pytest.fixture()
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    monkeypatch.delenv("EDGE_COSIGN_KEY", raising=False)


def promote(capsys: pytest.CaptureFixture[str], setup: Setup, *args: str) -> tuple[int, str, str]:
    return run_cli(
        capsys, "release", "promote", *args, "--key", str(setup.pub), "--releases-dir", str(setup.releases)
    )


def test_promote_publishes_a_channel_that_an_agent_verifies(
    setup: Setup, password: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("1.0.0", "--channel", "pilot", "--sign-key", str(setup.key))
    code, out, err = promote(capsys, setup, *args, "--percent", "34", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert (done["channel"], done["version"], done["percent"], done["repository"]) == (
        "pilot",
        "1.0.0",
        34,
        setup.repo,
    )
    assert done["unsigned_images"] == [] and done["tags_moved"] is False
    ch = read_channel(setup.repo, "pilot", setup.pub, platform="linux/arm64")
    assert (ch.version, ch.percent, ch.digest) == ("1.0.0", 34, done["digest"])
    assert ch.manifest.runtime.digest == setup.signed.digest

    code, out, err = promote(capsys, setup, *args)  # widened to the default 100 %, text output
    assert code == 0, err
    ch = read_channel(setup.repo, "pilot", setup.pub, verified=ch)
    assert ch.percent == 100 and ch.digest != done["digest"]
    assert out.strip() == f"channel pilot ({setup.repo}:channel-pilot) → 1.0.0 at 100 %: {ch.digest}"


def test_promote_to_beta_publishes_and_moves_the_image_tag(
    setup: Setup, password: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = promote(
        capsys, setup, "1.0.0", "--channel", "beta", "--sign-key", str(setup.key), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["tags_moved"] is True
    assert read_channel(setup.repo, "beta", setup.pub).version == "1.0.0"
    host, name = split_repository(setup.repo)
    assert Registry(host).resolve(name, "beta") == setup.signed.digest
    assert "beta" in load_release("1.0.0", setup.releases).channels


def test_unsigned_image_is_refused_unless_named(
    setup: Setup, password: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("1.1.0", "--channel", "trial", "--sign-key", str(setup.key))
    code, out, err = promote(capsys, setup, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "is not signed" in err and "Traceback" not in err
    with pytest.raises(ChannelMissing):  # nothing was published
        read_channel(setup.repo, "trial", setup.pub)

    code, _, err = promote(capsys, setup, *args, "--allow-unsigned", "converter")
    assert code == 2 and "converter allowed unsigned are not in release 1.1.0" in err

    code, out, err = promote(capsys, setup, *args, "--allow-unsigned", "runtime", "--json")
    assert code == 0, err
    assert json.loads(out)["unsigned_images"] == ["runtime"]
    with pytest.raises(ChannelRefused, match="is not signed"):  # robots that verify refuse it
        read_channel(setup.repo, "trial", setup.pub)


def test_a_signing_key_not_the_fleets_leaves_the_channel_as_it_was(
    setup: Setup, password: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = promote_channel(load_release("1.0.0", setup.releases), "keyed", 50, setup.key, setup.pub)
    code, out, err = promote(capsys, setup, "1.0.0", "--channel", "keyed", "--sign-key", str(setup.other_key))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "fleet's public key verifies" in err
    ch = read_channel(setup.repo, "keyed", setup.pub)
    assert (ch.digest, ch.percent) == (before.digest, 50)  # the tag never moved to the foreign signature


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--channel", "Pilot!"], "Channel name 'Pilot!' is not usable"),
        (["--channel", "pilot", "--percent", "101"], "percent must be a whole number from 0 to 100, got 101"),
        (["--channel", "pilot", "--percent", "-1"], "percent must be a whole number from 0 to 100, got -1"),
        (["--channel", "pilot", "--percent", "half"], "'half' is not a valid integer"),
        (["--channel", "pilot", "--tags-only"], "'pilot' is neither"),
        (["--channel", "pilot"], "pass --sign-key"),
    ],
    ids=["name", "over-100", "negative", "not-a-number", "tags-only-pilot", "no-sign-key"],
)
def test_bad_input_is_one_sentence(
    args: list[str], sentence: str, setup: Setup, password: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = promote(capsys, setup, "1.0.0", *args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert sentence in err


def test_bad_repository_is_one_sentence(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = promote(
        capsys, setup, "1.0.0", "--channel", "pilot", "--sign-key", str(setup.key), "--repository", "nohost"
    )
    assert code == 2 and err.count("\n") == 1 and "Repository 'nohost' is not usable" in err
    with pytest.raises(ChannelError, match="Repository 'a/B C' is not usable"):
        promote_channel(
            load_release("1.0.0", setup.releases), "pilot", 10, setup.key, setup.pub, repository="a/B C"
        )
