"""Shared runtime fixtures: a tiny model bundle built with onnx.helper (no torch), fake device roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import BatchProfile, BundleManifest, TensorSpec, sha256_file

FIXTURES = Path(__file__).parent / "fixtures"


def write_tiny_bundle(root: Path, seed: int = 0, batch: BatchProfile | None = None) -> Path:
    """Write a bundle whose policy is GlobalAveragePool(image) ++ robot_state → Gemm → action[batch, 7]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((3 + 48, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["pooled_flat"], axis=1),
        helper.make_node("Concat", ["pooled_flat", "robot_state"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "W", "B"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_policy",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224]),
            helper.make_tensor_value_info("robot_state", TensorProto.FLOAT, ["batch", 48]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 7])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "model.onnx")
    manifest = BundleManifest(
        precision="fp32",
        opset=17,
        inputs=[
            TensorSpec("image", "float32", ("batch", 3, 224, 224)),
            TensorSpec("robot_state", "float32", ("batch", 48)),
        ],
        outputs=[TensorSpec("action", "float32", ("batch", 7))],
        batch=batch or BatchProfile(1, 1, 8),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name="tiny-policy",
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root


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
