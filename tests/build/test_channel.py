"""Channels in the registry, for real: published through the registry API and signed with the cosign
binary (127.0.0.1:5000 from scripts/host-setup), read back and verified in Python. Unsigned, re-signed
with another key, or pointing at images whose signatures or digests do not match: refused in one
sentence. And the robots' stable buckets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from edge_deploy.release.channel import (
    ChannelError,
    ChannelMissing,
    ChannelRefused,
    bucket,
    check_channel_name,
    check_percent,
    in_rollout,
    publish_channel,
    push_channel_artifact,
    read_channel,
)
from edge_deploy.release.manifest import ReleaseImage
from tests.build.channels import PASSWORD, key_pair, need_registry_and_cosign, push_image, release, sign


@dataclass
class Setup:
    repo: str  # REGISTRY/name
    key: Path
    pub: Path
    other_key: Path
    other_pub: Path
    image: ReleaseImage  # signed with key


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_registry_and_cosign()
    root = tmp_path_factory.mktemp("channel")
    key, pub = key_pair(root / "fleet")
    other_key, other_pub = key_pair(root / "other")
    name = f"edge-deploy-channel/{secrets.token_hex(4)}"
    image = push_image(name)
    sign(image, key)
    yield Setup(image.repository, key, pub, other_key, other_pub, image)


pytestmark = pytest.mark.docker


def test_published_channel_reads_back_verified(setup: Setup) -> None:
    m = release("1.2.0", setup.image)
    digest = publish_channel(setup.repo, "stable", m, 34, setup.key, password=PASSWORD)
    ch = read_channel(setup.repo, "stable", setup.pub, platform="linux/arm64")
    assert (ch.version, ch.percent, ch.digest) == ("1.2.0", 34, digest)
    assert ch.manifest.runtime.ref == setup.image.ref
    assert ch.manifest.runtime.platforms == setup.image.platforms
    # Moving the channel (a new percentage) is a new artifact, signed again, read as such.
    publish_channel(setup.repo, "stable", m, 100, setup.key, password=PASSWORD)
    assert read_channel(setup.repo, "stable", setup.pub).percent == 100


def test_unsigned_channel_is_refused(setup: Setup) -> None:
    push_channel_artifact(setup.repo, "unsigned", release("1.2.0", setup.image), 100)
    with pytest.raises(ChannelRefused, match=r"Channel 'unsigned' .* is not signed: no cosign signature"):
        read_channel(setup.repo, "unsigned", setup.pub)


def test_channel_signed_with_another_key_is_refused(setup: Setup) -> None:
    publish_channel(
        setup.repo, "resigned", release("1.2.0", setup.image), 100, setup.other_key, password=PASSWORD
    )
    with pytest.raises(ChannelRefused, match="no signature that the fleet's public key verifies"):
        read_channel(setup.repo, "resigned", setup.pub)


def test_unsigned_image_is_refused(setup: Setup) -> None:
    unsigned = push_image(setup.repo.split("/", 1)[1])
    publish_channel(
        setup.repo, "unsigned-image", release("1.3.0", unsigned), 100, setup.key, password=PASSWORD
    )
    with pytest.raises(ChannelRefused, match=r"Image 'runtime' of the channel's release .* is not signed"):
        read_channel(setup.repo, "unsigned-image", setup.pub)


def test_image_signed_with_another_key_is_refused(setup: Setup) -> None:
    theirs = push_image(setup.repo.split("/", 1)[1])
    sign(theirs, setup.other_key)
    publish_channel(setup.repo, "their-image", release("1.3.0", theirs), 100, setup.key, password=PASSWORD)
    with pytest.raises(ChannelRefused, match=r"Image 'runtime' .* no signature that the fleet's public key"):
        read_channel(setup.repo, "their-image", setup.pub)


def test_manifest_whose_platform_digest_differs_is_refused(setup: Setup) -> None:
    wrong = replace(setup.image, platforms={"linux/arm64": "sha256:" + "e" * 64})
    publish_channel(setup.repo, "mismatch", release("1.4.0", wrong), 100, setup.key, password=PASSWORD)
    with pytest.raises(ChannelRefused, match="does not list the linux/arm64 digest the release recorded"):
        read_channel(setup.repo, "mismatch", setup.pub)


def test_platform_the_robot_needs_must_be_in_the_index(setup: Setup) -> None:
    publish_channel(setup.repo, "arm-only", release("1.4.0", setup.image), 100, setup.key, password=PASSWORD)
    with pytest.raises(ChannelRefused, match="has no linux/amd64 image"):
        read_channel(setup.repo, "arm-only", setup.pub, platform="linux/amd64")


def test_missing_channel_and_bad_key_are_one_sentence(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ChannelMissing, match=r"Channel 'never' does not exist"):
        read_channel(setup.repo, "never", setup.pub)
    (tmp_path / "not.pub").write_text("hello\n")
    with pytest.raises(ChannelError, match=r"is not a PEM public key \(cosign.pub\)\.$"):
        read_channel(setup.repo, "stable", tmp_path / "not.pub")


def test_bucket_is_stable_in_range_and_spread() -> None:
    assert bucket("arm-1") == bucket("arm-1")
    names = [f"robot-{i}" for i in range(2000)]
    buckets = [bucket(n) for n in names]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(in_rollout(n, 34) for n in names) / len(names)
    assert 0.30 < share < 0.38, share  # about a third at 34 %
    assert not any(in_rollout(n, 0) for n in names) and all(in_rollout(n, 100) for n in names)
    # Known values: the bucket is SHA-256 of the name, the same on every host and Python.
    assert [bucket(n) for n in ("arm-1", "arm-2", "arm-3")] == [76, 49, 26]


@pytest.mark.parametrize("name", ["", "Stable", "-x", "a/b", "a b", "x" * 65])
def test_channel_names_that_cannot_be_tags(name: str) -> None:
    with pytest.raises(ChannelError, match="is not usable"):
        check_channel_name(name)


@pytest.mark.parametrize("percent", [-1, 101, 34.5, True, "34"])
def test_percent_must_be_0_to_100(percent: object) -> None:
    with pytest.raises(ChannelError, match="whole number from 0 to 100"):
        check_percent(percent)


def test_an_unchanged_channel_costs_one_request(setup: Setup) -> None:
    import httpx

    from edge_deploy.release.registry import Registry

    requests: list[str] = []
    client = httpx.Client(
        timeout=10, event_hooks={"request": [lambda r: requests.append(f"{r.method} {r.url.path}")]}
    )
    registries = {setup.repo.split("/")[0]: Registry(setup.repo.split("/")[0], client=client)}
    publish_channel(setup.repo, "polled", release("1.5.0", setup.image), 50, setup.key, password=PASSWORD)
    first = read_channel(setup.repo, "polled", setup.pub, registries=registries)
    full = len(requests)
    assert full >= 6, (
        requests
    )  # channel, its signature and payload, its document, the image's signature and index
    requests.clear()
    again = read_channel(setup.repo, "polled", setup.pub, registries=registries, verified=first)
    assert again is first and requests == [f"GET /v2/{setup.repo.split('/', 1)[1]}/manifests/channel-polled"]
    publish_channel(setup.repo, "polled", release("1.5.0", setup.image), 100, setup.key, password=PASSWORD)
    requests.clear()
    moved = read_channel(setup.repo, "polled", setup.pub, registries=registries, verified=first)
    assert moved.percent == 100 and len(requests) == full  # a new artifact: verified in full again
