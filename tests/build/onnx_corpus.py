"""ONNX models this project did not write, for the bring-your-own-model corpus test.

Sources: the model files shipped inside the ``onnx`` package's backend test data (old IR 3 files from
ONNX's model zoo, with the zoo's architectures and light weights, and PyTorch-converted layer tests) and
``torch.nn`` stock modules exported at test time by torch's own exporters at several opsets. Nothing is
downloaded and nothing large is committed.

``python -m tests.build.onnx_corpus`` runs the corpus and prints the table for docs/model-pipeline.md.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_DATA = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data"


@dataclass(frozen=True)
class CorpusModel:
    name: str
    kind: str  # CNN, MLP, RNN, transformer, layer
    source: str
    make: Callable[[Path], Path]


def _shipped(rel: str) -> Callable[[Path], Path]:
    def make(_tmp: Path) -> Path:
        return ONNX_DATA / rel

    return make


def _exported(
    build: Callable[[], Any], shapes: dict[str, tuple[int, ...]], opset: int, dynamo: bool = False
) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        import torch

        torch.manual_seed(0)
        module = build().eval()
        args = tuple(
            torch.zeros(s, dtype=torch.bool) if n == "mask" else torch.randn(s) for n, s in shapes.items()
        )
        names = list(shapes)
        path = tmp / "model.onnx"
        kwargs: dict[str, Any] = {
            "input_names": names,
            "output_names": ["out"],
            "opset_version": opset,
            "dynamo": dynamo,
        }
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            kwargs["dynamic_shapes"] = tuple({0: batch} for _ in names)
        else:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in [*names, "out"]}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), **kwargs)
        return path

    return make


def _mlp() -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))


def _cnn() -> Any:
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class _Recurrent:
    """nn.LSTM / nn.GRU / nn.RNN returning only the sequence output (their stock forward also returns state)."""

    def __new__(cls, kind: str) -> Any:
        import torch
        import torch.nn as nn

        class Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(nn, kind)(8, 16, num_layers=2, batch_first=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.rnn(x)[0]

        return Wrapped()


def _encoder() -> Any:
    import torch.nn as nn

    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _masked_encoder() -> Any:
    import torch
    import torch.nn as nn

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = _encoder()

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.enc(x, src_key_padding_mask=mask)

    return Masked()


CORPUS: list[CorpusModel] = [
    CorpusModel(
        "zoo SqueezeNet",
        "CNN",
        "onnx wheel: light/light_squeezenet.onnx",
        _shipped("light/light_squeezenet.onnx"),
    ),
    CorpusModel(
        "zoo ShuffleNet",
        "CNN",
        "onnx wheel: light/light_shufflenet.onnx",
        _shipped("light/light_shufflenet.onnx"),
    ),
    CorpusModel(
        "zoo Inception v1",
        "CNN",
        "onnx wheel: light/light_inception_v1.onnx",
        _shipped("light/light_inception_v1.onnx"),
    ),
    CorpusModel(
        "torch Conv2d",
        "layer",
        "onnx wheel: pytorch-converted/test_Conv2d",
        _shipped("pytorch-converted/test_Conv2d/model.onnx"),
    ),
    CorpusModel(
        "torch Conv1d",
        "layer",
        "onnx wheel: pytorch-converted/test_Conv1d",
        _shipped("pytorch-converted/test_Conv1d/model.onnx"),
    ),
    CorpusModel(
        "torch Conv3d",
        "layer",
        "onnx wheel: pytorch-converted/test_Conv3d",
        _shipped("pytorch-converted/test_Conv3d/model.onnx"),
    ),
    CorpusModel(
        "torch ConvTranspose2d",
        "layer",
        "onnx wheel: pytorch-converted/test_ConvTranspose2d",
        _shipped("pytorch-converted/test_ConvTranspose2d/model.onnx"),
    ),
    CorpusModel(
        "torch Conv2d depthwise",
        "layer",
        "onnx wheel: pytorch-converted/test_Conv2d_depthwise",
        _shipped("pytorch-converted/test_Conv2d_depthwise/model.onnx"),
    ),
    CorpusModel(
        "torch Linear (no bias)",
        "MLP",
        "onnx wheel: pytorch-converted/test_Linear_no_bias",
        _shipped("pytorch-converted/test_Linear_no_bias/model.onnx"),
    ),
    CorpusModel(
        "torch Embedding (int64 input)",
        "layer",
        "onnx wheel: pytorch-converted/test_Embedding",
        _shipped("pytorch-converted/test_Embedding/model.onnx"),
    ),
    CorpusModel(
        "torch ELU",
        "layer",
        "onnx wheel: pytorch-converted/test_ELU",
        _shipped("pytorch-converted/test_ELU/model.onnx"),
    ),
    CorpusModel(
        "torch PixelShuffle",
        "layer",
        "onnx wheel: pytorch-converted/test_PixelShuffle",
        _shipped("pytorch-converted/test_PixelShuffle/model.onnx"),
    ),
    CorpusModel(
        "torch LogSoftmax",
        "layer",
        "onnx wheel: pytorch-converted/test_LogSoftmax",
        _shipped("pytorch-converted/test_LogSoftmax/model.onnx"),
    ),
    CorpusModel(
        "torch MaxPool2d dilated",
        "layer",
        "onnx wheel: pytorch-converted/test_MaxPool2d_stride_padding_dilation",
        _shipped("pytorch-converted/test_MaxPool2d_stride_padding_dilation/model.onnx"),
    ),
    CorpusModel(
        "nn.Sequential MLP, opset 7",
        "MLP",
        "torch.onnx.export (TorchScript exporter)",
        _exported(_mlp, {"x": (2, 16)}, 7),
    ),
    CorpusModel(
        "nn.Sequential CNN, opset 9",
        "CNN",
        "torch.onnx.export (TorchScript exporter)",
        _exported(_cnn, {"x": (2, 3, 32, 32)}, 9),
    ),
    CorpusModel(
        "nn.RNN, opset 10",
        "RNN",
        "torch.onnx.export (TorchScript exporter)",
        _exported(lambda: _Recurrent("RNN"), {"x": (2, 5, 8)}, 10),
    ),
    CorpusModel(
        "nn.GRU, opset 11",
        "RNN",
        "torch.onnx.export (TorchScript exporter)",
        _exported(lambda: _Recurrent("GRU"), {"x": (2, 5, 8)}, 11),
    ),
    CorpusModel(
        "nn.LSTM, opset 14",
        "RNN/LSTM",
        "torch.onnx.export (TorchScript exporter)",
        _exported(lambda: _Recurrent("LSTM"), {"x": (2, 5, 8)}, 14),
    ),
    CorpusModel(
        "nn.TransformerEncoder, opset 17",
        "transformer",
        "torch.onnx.export (TorchScript exporter)",
        _exported(_encoder, {"x": (2, 6, 32)}, 17),
    ),
    CorpusModel(
        "TransformerEncoder + bool mask, opset 17",
        "transformer",
        "torch.onnx.export (TorchScript exporter)",
        _exported(_masked_encoder, {"x": (2, 6, 32), "mask": (2, 6)}, 17),
    ),
    CorpusModel(
        "nn.Sequential CNN, opset 20",
        "CNN",
        "torch.onnx.export (TorchScript exporter)",
        _exported(_cnn, {"x": (2, 3, 32, 32)}, 20),
    ),
    CorpusModel(
        "nn.Sequential CNN, opset 21",
        "CNN",
        "torch.onnx.export (dynamo exporter)",
        _exported(_cnn, {"x": (2, 3, 32, 32)}, 21, dynamo=True),
    ),
]

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SAMPLES = 8  # random data; minmax calibration (entropy histograms cost ~10x the time)


def output_scale(path: Path, specs: list[Any]) -> float:
    """Largest |output| of the original model on random inputs: tolerances are relative to it."""
    import onnxruntime as ort

    from edge_deploy.model.validate import random_inputs

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = random_inputs(specs, 1, seed=7)
    outs = session.run(None, feeds)
    return max(float(np.abs(np.asarray(o, np.float64)).max(initial=0.0)) for o in outs)


def run_model(model: CorpusModel, tmp: Path) -> dict[str, Any]:
    """Convert at every precision; return a table row (source facts, per-precision deltas, seconds)."""
    import onnx

    from edge_deploy.model import ConvertOptions, convert
    from edge_deploy.model.loading import load_model
    from edge_deploy.model.validate import TOLERANCES, random_inputs

    path = model.make(tmp)
    proto = onnx.load(str(path), load_external_data=False)
    source = load_model(path)
    scale = max(1.0, output_scale(path, source.inputs))
    row: dict[str, Any] = {
        "name": model.name,
        "kind": model.kind,
        "source": model.source,
        "ir": int(proto.ir_version),
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "batch": "static " + str(source.static_batch) if source.static_batch else "dynamic",
        "inputs": ", ".join(f"{s.dtype}" for s in source.inputs),
        "output_scale": scale,
    }
    calibration = random_inputs(source.inputs, CALIBRATION_SAMPLES, seed=3)
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        result = convert(
            path,
            tmp / f"bundle-{precision}",
            ConvertOptions(
                precision=precision,
                calibration=calibration if precision == "int8" else None,
                calibration_method="minmax",
                tolerance=TOLERANCES[precision] * scale,
            ),
        )
        row[precision] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "fp32_vs_original": result.validation["fp32"]["max_abs"],
            "delta": result.validation.get(f"{precision}_vs_fp32", {}).get("max_abs"),
            "tolerance": TOLERANCES[precision] * scale,
        }
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | kind | source | IR | opset | batch | inputs | fp32 vs original | fp16 Δ | int8 Δ | |out| | s (3 converts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        secs = sum(r[p]["seconds"] for p in PRECISIONS)
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['source']} | {r['ir']} | {r['opset']} | {r['batch']} | "
            f"{r['inputs']} | {r['fp32']['fp32_vs_original']:.1e} | {r['fp16']['delta']:.1e} | "
            f"{r['int8']['delta']:.1e} | {r['output_scale']:.3g} | {secs:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import tempfile

    results = []
    for m in CORPUS:
        with tempfile.TemporaryDirectory(prefix="edge-corpus-") as d:
            results.append(run_model(m, Path(d)))
            print(f"{m.name}: ok", flush=True)
    print(markdown(results))
