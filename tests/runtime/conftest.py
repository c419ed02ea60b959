"""Shared runtime fixtures: a tiny model bundle built with onnx.helper (no torch), fake device roots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edge_runtime.bundle import BatchProfile
from edge_runtime.service import InferenceService, ServiceConfig, create_app
from tests.runtime.bundles import write_linear_bundle

FIXTURES = Path(__file__).parent / "fixtures"


def write_tiny_bundle(root: Path, seed: int = 0, batch: BatchProfile | None = None) -> Path:
    """Write a bundle whose policy is GlobalAveragePool(image) ++ robot_state → Gemm → action[batch, 7]."""
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


def make_service(bundle: Path, cache: Path, root: Path, **kw: object) -> InferenceService:
    config = ServiceConfig(
        bundle=bundle,
        cache=cache,
        backend="onnxruntime",
        device_root=root,
        warmup_runs=2,
        max_body_bytes=16 << 20,
        **kw,
    )  # type: ignore[arg-type]
    service = InferenceService(config)
    service.load()
    return service


@pytest.fixture(scope="module")
def client(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A loaded service (ONNX Runtime, the tiny bundle) behind Starlette's TestClient, per test module."""
    tmp = tmp_path_factory.mktemp("service")
    service = make_service(tiny_bundle, tmp / "cache", tmp / "no-device")
    with TestClient(create_app(service)) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c
