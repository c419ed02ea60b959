"""Shared runtime fixtures: a tiny model bundle built with onnx.helper (no torch), fake device roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import BatchProfile

FIXTURES = Path(__file__).parent / "fixtures"


def write_tiny_bundle(root: Path, seed: int = 0, batch: BatchProfile | None = None) -> Path:
    """Write a bundle whose policy is GlobalAveragePool(image) ++ robot_state → Gemm → action[batch, 7]."""
    from edge_deploy.sample import write_linear_bundle

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((3 + 48, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    return write_linear_bundle(root, weight, bias, batch=batch, name="tiny-policy", producer="edge-tests")


def sample_feeds(batch: int = 1, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32),
        "robot_state": rng.standard_normal((batch, 48)).astype(np.float32),
    }


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid bundle directory (model.onnx + bundle.json); treat it as read-only."""
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def fresh_bundle(tmp_path: Path) -> Path:
    """A bundle of one's own, for tests that modify it."""
    return write_tiny_bundle(tmp_path / "bundle", seed=3)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A copy of the Orin Nano / JetPack 6 device root under tests/runtime/fixtures."""
    import shutil

    dst = tmp_path / "root"
    shutil.copytree(FIXTURES / "orin_nano_r36", dst)
    return dst
