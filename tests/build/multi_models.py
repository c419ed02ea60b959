"""Models for tests of releases of several models: a generated detector-like CNN (ONNX) whose detections
have the width of the sample policy's robot_state, and a policy bundle that is ready but answers NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DETECTIONS = 48  # 16 boxes x (x, y, score): the sample policy's robot_state width


def write_detector(path: Path, seed: int = 7) -> Path:
    """A small detector-like CNN as ONNX: image [B,3,224,224] → two strided convolutions → global pooling →
    16 boxes of (x, y, score) in [0, 1], ``detections`` [B,48]; weights from a fixed seed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(weights(8, 3, 5, 5), "c1_w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "c1_b"),
        numpy_helper.from_array(weights(16, 8, 3, 3), "c2_w"),
        numpy_helper.from_array(np.zeros(16, np.float32), "c2_b"),
        numpy_helper.from_array(weights(DETECTIONS, 16).T.copy(), "fc_w"),
        numpy_helper.from_array(np.zeros(DETECTIONS, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], strides=[4, 4], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["detections"]),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", DETECTIONS])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_broken_policy(root: Path) -> Path:
    """A bundle with the sample policy's interface whose action is sqrt of a negative number: it loads,
    is ready, and answers NaN, which only the smoke inference catches."""
    from onnx import helper, numpy_helper

    from tests.runtime.bundles import ACTION_DIM, STATE_DIM, write_onnx_bundle

    nodes = [
        helper.make_node("Gemm", ["robot_state", "W", "B"], ["lin"]),
        helper.make_node("Abs", ["lin"], ["mag"]),
        helper.make_node("Neg", ["mag"], ["neg"]),
        helper.make_node("Sub", ["neg", "one"], ["below"]),
        helper.make_node("Sqrt", ["below"], ["action"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((STATE_DIM, ACTION_DIM), np.float32), "W"),
        numpy_helper.from_array(np.zeros(ACTION_DIM, np.float32), "B"),
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
    ]
    return write_onnx_bundle(root, nodes, inits, name="policy")
