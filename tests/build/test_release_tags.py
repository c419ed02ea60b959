"""Tag rules (docker/metadata-action's semver patterns, plus "floating tags only move forward")."""

from __future__ import annotations

import pytest

from edge_deploy.release.tags import (
    VersionError,
    check_channel,
    compute_tags,
    default_channel,
    normalize_version,
    parse_version,
)


def test_stable_first_release_gets_all_semver_tags_sha_and_channel() -> None:
    plan = compute_tags("1.2.3", released=["1.2.3"], git_sha="0123456789abcdef", channel="stable")
    assert plan.fixed == ["1.2.3", "sha-0123456"]
    assert plan.floating == ["1.2", "1", "latest", "stable"]


def test_prerelease_gets_only_version_and_channel() -> None:
    plan = compute_tags("1.3.0-rc.1", released=["1.2.3"], git_sha="abcdef0123", channel="beta")
    assert plan.all == ["1.3.0-rc.1", "sha-abcdef0", "beta"]
    assert "latest" not in plan.all and "1" not in plan.all and "1.3" not in plan.all


def test_older_patch_does_not_pull_floating_tags_back() -> None:
    plan = compute_tags("0.1.2", released=["0.1.0", "0.1.1", "0.2.0", "0.1.2"])
    assert plan.floating == ["0.1"]  # 0.1.2 is the newest 0.1, but 0.2.0 keeps "0" and latest
    plan = compute_tags("0.1.1", released=["0.1.0", "0.1.2", "0.2.0"])
    assert plan.floating == []  # a late re-release of 0.1.1 moves nothing


def test_prereleases_do_not_count_as_higher_stable() -> None:
    plan = compute_tags("0.1.1", released=["0.1.0", "0.2.0-rc.1", "0.1.1"])
    assert plan.floating == ["0.1", "0", "latest"]


def test_build_metadata_is_not_a_valid_tag_character() -> None:
    plan = compute_tags("1.0.0+jp6", released=[])
    assert plan.fixed == ["1.0.0-jp6"]


@pytest.mark.parametrize("text", ["1.2", "latest", "1.2.3.4", "01.2.3", "", "v"])
def test_non_semver_is_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(VersionError, match="is not a semantic version"):
        parse_version(text)


def test_leading_v_is_accepted_and_dropped() -> None:
    assert normalize_version("v0.2.0-rc.1") == "0.2.0-rc.1"


def test_channels() -> None:
    assert default_channel("0.2.0-rc.1") == "beta"
    assert default_channel("0.2.0") == "stable"
    with pytest.raises(VersionError, match="not one of stable, beta"):
        check_channel("nightly")
