"""Tiny model bundles for runtime tests and benchmarks, written with onnx.helper and ``edge_runtime.bundle`` alone.

The runtime side must test without the host side (and so without torch): these graphs have the sample
policy's interface (image [B,3,H,W] + robot_state [B,48] → action [B,7]) so every runtime test can use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import BatchProfile, BundleManifest, TensorSpec, sha256_file

STATE_DIM = 48
ACTION_DIM = 7


def write_onnx_bundle(
    root: Path,
    nodes: list[Any],
    initializers: list[Any],
    *,
    image_hw: int = 224,
    batch: BatchProfile | None = None,
    name: str = "policy",
    producer: str = "edge-tests",
) -> Path:
    """An fp32 bundle (model.onnx + bundle.json) for a graph with the sample policy's interface."""
    import onnx
    from onnx import TensorProto, helper

    image: tuple[int | str, ...] = ("batch", 3, image_hw, image_hw)
    graph = helper.make_graph(
        nodes,
        name.replace("-", "_"),
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, list(image)),
            helper.make_tensor_value_info("robot_state", TensorProto.FLOAT, ["batch", STATE_DIM]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACTION_DIM])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    model.ir_version = 8
    onnx.checker.check_model(model)
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "model.onnx")
    manifest = BundleManifest(
        precision="fp32",
        opset=17,
        inputs=[
            TensorSpec("image", "float32", image),
            TensorSpec("robot_state", "float32", ("batch", STATE_DIM)),
        ],
        outputs=[TensorSpec("action", "float32", ("batch", ACTION_DIM))],
        batch=batch or BatchProfile(1, 1, 8),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name=name,
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root


def write_linear_bundle(
    root: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    image_hw: int = 224,
    batch: BatchProfile | None = None,
    name: str = "tiny-policy",
    producer: str = "edge-tests",
) -> Path:
    """GlobalAveragePool(image) ++ robot_state → Gemm(weight [3+48, 7], bias [7]) → action, as a bundle."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["pooled_flat"], axis=1),
        helper.make_node("Concat", ["pooled_flat", "robot_state"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "W", "B"], ["action"]),
    ]
    inits = [
        numpy_helper.from_array(weight.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "B"),
    ]
    return write_onnx_bundle(root, nodes, inits, image_hw=image_hw, batch=batch, name=name, producer=producer)


def write_detector_bundle(
    root: Path,
    *,
    image_hw: int = 224,
    channels: int = 8,
    seed: int = 0,
    batch: BatchProfile | None = None,
    name: str = "detector",
) -> Path:
    """A detector-like CNN bundle: image [B,3,H,W] → Conv(3→C) → Relu → Conv(C→3) → ``features`` [B,3,H,W]
    (the policy's image shape, so it can feed a policy) and GlobalAveragePool → ``score`` [B,3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((3, channels, 3, 3)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "W1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "W2"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["score"], axis=1),
    ]
    shape: tuple[int | str, ...] = ("batch", 3, image_hw, image_hw)
    graph = helper.make_graph(
        nodes,
        name.replace("-", "_"),
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, list(shape)),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "model.onnx")
    manifest = BundleManifest(
        precision="fp32",
        opset=17,
        inputs=[TensorSpec("image", "float32", shape)],
        outputs=[TensorSpec("features", "float32", shape), TensorSpec("score", "float32", ("batch", 3))],
        batch=batch or BatchProfile(1, 1, 8),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name=name,
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root
