"""The suite's disk guard (tests/conftest.py): a disk too full for the Docker tests fails each file's tests in
one sentence; the images a session built are the only ones it removes."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tests.conftest import REGISTRY, DiskKeeper, _ours


def keeper_on(root: Path) -> DiskKeeper:
    keeper = DiskKeeper()
    keeper.started, keeper.root = True, root
    return keeper


def test_a_disk_below_the_floor_fails_every_test_of_the_file_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PRUNE_BELOW_GIB", "0")  # never prune the real engine from a unit test
    monkeypatch.setenv("EDGE_TEST_MIN_FREE_GIB", str(10**9))  # more than any disk has
    keeper, first, second = keeper_on(tmp_path), types.ModuleType("first"), types.ModuleType("second")
    for module in (first, first, second):
        with pytest.raises(pytest.fail.Exception) as failed:
            keeper.before_file(module)
        message = str(failed.value)
        assert message.startswith(f"The disk holding {tmp_path} has ") and message.count(".") <= 3
        assert "GiB free even after pruning the build cache" in message
    assert keeper.pruned == []


def test_enough_room_lets_the_file_run_and_prunes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PRUNE_BELOW_GIB", "0")
    monkeypatch.setenv("EDGE_TEST_MIN_FREE_GIB", "0")
    keeper = keeper_on(tmp_path)
    keeper.before_file(types.ModuleType("m"))
    assert keeper.failure == "" and keeper.pruned == []


def test_only_the_projects_test_images_are_removed_never_the_stand_in_bases() -> None:
    assert _ours(f"{REGISTRY}/edge-deploy/converter:e2e-1a2b3c4d")
    assert _ours(f"{REGISTRY}/edge-deploy-e2e-1a2b3c4d/runtime:e2e-1a2b3c4d")
    assert not _ours(f"{REGISTRY}/edge-deploy/l4t-standin:r36.4")
    assert not _ours("debian:12")
    assert not _ours(f"{REGISTRY}/someone-else/app:1")
