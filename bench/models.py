"""Benchmark models built with onnx.helper (no torch): the policy's I/O with a small conv trunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.runtime.bundles import write_linear_bundle, write_onnx_bundle


def write_conv_policy_bundle(root: Path, seed: int = 0) -> Path:
    """image[B,3,224,224] → 3×(Conv+BatchNorm+Relu, stride 2) → pool ++ robot_state[B,48] → MLP → action[B,7].

    BatchNorm after each Conv gives ONNX Runtime's optimizer real work (fusions), like an exported policy.
    """
    from onnx import helper, numpy_helper

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
    return write_onnx_bundle(root, nodes, inits, name="conv-policy", producer="edge-bench")


def write_small_io_bundle(root: Path, image_hw: int = 8) -> Path:
    """The policy's interface with an image of image_hw×image_hw: measures the service's fixed per-request cost."""
    weight = np.full((3 + 48, 7), 0.01, dtype=np.float32)
    return write_linear_bundle(
        root, weight, np.zeros(7, np.float32), image_hw=image_hw, name="small-io", producer="edge-bench"
    )
