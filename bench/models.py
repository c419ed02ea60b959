"""Benchmark models built with onnx.helper (no torch): the policy's I/O with a small conv trunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.bundle import BatchProfile, BundleManifest, TensorSpec, sha256_file


def write_conv_policy_bundle(root: Path, seed: int = 0) -> Path:
    """image[B,3,224,224] → 3×(Conv+BatchNorm+Relu, stride 2) → pool ++ robot_state[B,48] → MLP → action[B,7].

    BatchNorm after each Conv gives ONNX Runtime's optimizer real work (fusions), like an exported policy.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    x, cin = "image", 3
    for i, cout in enumerate((32, 64, 128)):
        w = const(f"conv{i}.w", rng.standard_normal((cout, cin, 3, 3)) * (2.0 / (cin * 9)) ** 0.5)
        nodes.append(helper.make_node("Conv", [x, w], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]))
        bn = [
            const(f"bn{i}.{p}", v)
            for p, v in (
                ("s", rng.uniform(0.5, 1.5, cout)),
                ("b", rng.normal(0, 0.1, cout)),
                ("m", rng.normal(0, 0.1, cout)),
                ("v", rng.uniform(0.5, 1.5, cout)),
            )
        ]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"n{i}"]))
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"]))
        x, cin = f"r{i}", cout
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Concat", ["flat", "robot_state"], ["feat"], axis=1),
        helper.make_node(
            "Gemm",
            [
                "feat",
                const("fc1.w", rng.standard_normal((cin + 48, 256)) * 0.05),
                const("fc1.b", np.zeros(256)),
            ],
            ["h"],
        ),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node(
            "Gemm",
            ["hr", const("fc2.w", rng.standard_normal((256, 7)) * 0.05), const("fc2.b", np.zeros(7))],
            ["action"],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_policy",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224]),
            helper.make_tensor_value_info("robot_state", TensorProto.FLOAT, ["batch", 48]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 7])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-bench")
    model.ir_version = 8
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
        batch=BatchProfile(1, 1, 8),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name="conv-policy",
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root


def write_small_io_bundle(root: Path, image_hw: int = 8) -> Path:
    """The policy's interface with an image of image_hw×image_hw: measures the service's fixed per-request cost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.full((3 + 48, 7), 0.01, dtype=np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Concat", ["flat", "robot_state"], ["feat"], axis=1),
        helper.make_node("Gemm", ["feat", "W", "B"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_io",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, image_hw, image_hw]),
            helper.make_tensor_value_info("robot_state", TensorProto.FLOAT, ["batch", 48]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 7])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(7, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-bench")
    model.ir_version = 8
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "model.onnx")
    manifest = BundleManifest(
        precision="fp32",
        opset=17,
        inputs=[
            TensorSpec("image", "float32", ("batch", 3, image_hw, image_hw)),
            TensorSpec("robot_state", "float32", ("batch", 48)),
        ],
        outputs=[TensorSpec("action", "float32", ("batch", 7))],
        batch=BatchProfile(1, 1, 8),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name="small-io",
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root
