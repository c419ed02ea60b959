"""FP32 vs FP16 latency of the sample policy on an NVIDIA GPU with PyTorch (eager and CUDA graphs).

This is NOT a Jetson measurement: it runs wherever torch sees a CUDA GPU (our lent machine is an H100,
compute capability 9.0; TensorRT is not installed there). It tells how much of the FP16 gain the model's
shape allows on a big GPU; Jetson numbers come from `edge-runtime profile` on the robot.

Run: ``python -m bench gpu_precision`` or ``python -m bench.gpu_precision [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

NAME = "gpu_precision"


def _measure(fn: Any, runs: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def _graphed(model: Any, inputs: tuple[Any, ...]) -> Any:
    """Capture one forward pass in a CUDA graph; replay it with static input buffers."""
    import torch

    static_in = tuple(x.clone() for x in inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(*static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = model(*static_in)

    def replay() -> Any:
        graph.replay()
        return static_out

    return replay


def run(args: Any = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from edge_deploy.model.sample import build_policy, calibration_set

    if not torch.cuda.is_available():
        raise SystemExit("gpu_precision needs a CUDA GPU visible to torch; none is here.")
    runs = getattr(args, "runs", None) or 300
    repeats = getattr(args, "repeats", None) or 5
    torch.backends.cuda.matmul.allow_tf32 = False  # honest FP32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    base = build_policy().to(dev)
    models = {"fp32": base, "fp16": build_policy().to(dev).half().to(memory_format=torch.channels_last)}  # type: ignore[call-overload]
    calib = calibration_set(32)
    results: dict[str, Any] = {"rows": []}
    # Accuracy of FP16 against FP32 on the calibration set.
    with torch.no_grad():
        img = torch.from_numpy(calib["image"]).to(dev)
        st = torch.from_numpy(calib["robot_state"]).to(dev)
        ref = models["fp32"](img, st).float().cpu().numpy()
        half = models["fp16"](img.half(), st.half()).float().cpu().numpy()
    results["fp16_max_abs_error"] = float(np.abs(ref - half).max())
    results["fp16_mean_abs_error"] = float(np.abs(ref - half).mean())
    batches = (1, 8, 64, 256)
    img_big = img.repeat(256 // img.shape[0], 1, 1, 1)
    st_big = st.repeat(256 // st.shape[0], 1)
    for batch in batches:
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleave variants so drift hits all alike
            for prec, model in models.items():
                dtype = torch.float16 if prec == "fp16" else torch.float32
                fmt = torch.channels_last if prec == "fp16" else torch.contiguous_format
                x = (
                    img_big[:batch].to(dtype).contiguous(memory_format=fmt),
                    st_big[:batch].to(dtype).contiguous(),
                )
                with torch.no_grad():
                    eager = _measure(lambda m=model, x=x: m(*x), runs, warmup=30)
                graph = _measure(_graphed(model, x), runs, warmup=30)
                samples.setdefault(f"{prec} eager", []).append(statistics.median(eager))
                samples.setdefault(f"{prec} cuda-graph", []).append(statistics.median(graph))
        for variant, medians in samples.items():
            results["rows"].append(
                {
                    "batch": batch,
                    "variant": variant,
                    "p50_ms_median_of_repeats": statistics.median(medians),
                    "p50_ms_min": min(medians),
                    "p50_ms_max": max(medians),
                    "repeats": repeats,
                    "runs": runs,
                }
            )
        by = {r["variant"]: r["p50_ms_median_of_repeats"] for r in results["rows"] if r["batch"] == batch}
        results[f"batch{batch}_fp16_speedup_eager"] = by["fp32 eager"] / by["fp16 eager"]
        results[f"batch{batch}_fp16_speedup_graph"] = by["fp32 cuda-graph"] / by["fp16 cuda-graph"]
        results[f"batch{batch}_graph_speedup_fp16"] = by["fp16 eager"] / by["fp16 cuda-graph"]
    results["machine"] = {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "note": "NOT a Jetson: data-centre GPU, PyTorch only (no TensorRT); TF32 disabled for FP32; "
        "FP16 runs channels-last (tensor-core friendly layout).",
    }
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'batch':>5}  {'variant':<16} {'p50 ms':>9} {'min..max of repeats':>22}"]
    for r in results["rows"]:
        lines.append(
            f"{r['batch']:>5}  {r['variant']:<16} {r['p50_ms_median_of_repeats']:>9.4f} "
            f"{r['p50_ms_min']:>10.4f}..{r['p50_ms_max']:<10.4f}"
        )
    for k, v in results.items():
        if k.startswith("batch") or k.startswith("fp16_"):
            lines.append(f"{k}: {v:.4g}")
    lines.append(f"machine: {results['machine']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))


if __name__ == "__main__":
    main()
