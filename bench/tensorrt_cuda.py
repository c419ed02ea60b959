"""The TensorRT backend's CUDA half on a real NVIDIA GPU, with cuda-python and no TensorRT.

What runs for real: ``edge_runtime.backends.trt_cuda.CudaStreamRunner`` (device buffers, its private
stream, async host↔device copies, synchronize, CUDA-graph capture in thread-local mode, replay, recapture
on a shape change, fallback when a capture fails), ``CudaMemory`` (the INT8 calibrator's device batches),
``edge_runtime.device.cuda_runtime``/``cuda_gpu``/``probe`` (which cuda-python spelling imports, the GPU's
name and compute capability, the CUDA runtime version). The call sequence per request is the one
``TensorRTEngine.infer`` makes (size buffers, upload inputs, execute, download outputs, synchronize).

What is NOT TensorRT: the enqueue. ``execute_async_v3`` is replaced by two small CUDA kernels of our own
(NVRTC via CuPy's RawKernel, launched on the runner's stream): per-sample channel means of the image and a
tanh(W·[state, image features] + b) head, so the outputs can be checked against numpy. Timings are of this
plumbing on a data-centre GPU, NOT of a Jetson or of a TensorRT engine.

Run on a machine with an NVIDIA GPU, cuda-python (``cuda.bindings``) and CuPy:
``PYTHONPATH=runtime python -m bench.tensorrt_cuda [--runs N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "tensorrt_cuda"
STATE, ACTION, CHANNELS, SIDE = 48, 7, 3, 224

_KERNELS = r"""
extern "C" __global__ void channel_means(const float* image, float* feats, int hw) {
    // one block per (sample, channel): feats[b*3+c] = mean(image[b, c, :, :])
    const float* plane = image + (size_t)blockIdx.x * hw;
    __shared__ float part[256];
    float s = 0.f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) s += plane[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) feats[blockIdx.x] = part[0] / hw;
}
extern "C" __global__ void policy_head(const float* state, const float* feats, const float* w,
                                       const float* bias, float* action, int batch) {
    // action[b, a] = tanh(sum_j w[a, j] * x[b, j] + bias[a]),  x = [state (48), feats (3)]
    int b = blockIdx.x, a = threadIdx.x;
    if (b >= batch || a >= 7) return;
    float acc = bias[a];
    for (int j = 0; j < 48; ++j) acc += w[a * 51 + j] * state[b * 48 + j];
    for (int c = 0; c < 3; ++c) acc += w[a * 51 + 48 + c] * feats[b * 3 + c];
    action[b * 7 + a] = tanhf(acc);
}
"""


def reference(image: np.ndarray, state: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    feats = image.reshape(image.shape[0], CHANNELS, -1).mean(axis=2, dtype=np.float64)
    x = np.concatenate([state.astype(np.float64), feats], axis=1)
    return np.tanh(x @ w.astype(np.float64).T + bias).astype(np.float32)


class KernelPolicy:
    """Stands in for TensorRT's execution context: ``execute_async_v3(stream)`` launches real kernels."""

    def __init__(self, runner: Any, w: np.ndarray, bias: np.ndarray) -> None:
        import cupy

        self.cupy = cupy
        module = cupy.RawModule(code=_KERNELS)
        self.means = module.get_function("channel_means")
        self.head = module.get_function("policy_head")
        self.runner = runner
        self.w_ptr = runner.buffer("w", w.nbytes)
        self.b_ptr = runner.buffer("bias", bias.nbytes)
        runner.upload(self.w_ptr, w)
        runner.upload(self.b_ptr, bias)
        runner.synchronize()
        self.batch = 0
        self.fail_next_capture = False
        self.enqueues = 0

    def bind(self, batch: int, image: int, state: int, feats: int, action: int) -> None:
        self.batch, self.ptrs = batch, (image, state, feats, action)

    def execute_async_v3(self, stream: int) -> bool:
        if (
            self.fail_next_capture
            and int(self.runner.cudart.cudaStreamIsCapturing(self.runner.stream)[1]) != 0
        ):
            self.fail_next_capture = False
            return False  # as a TensorRT enqueue that cannot be captured reports it
        cupy, (image, state, feats, action) = self.cupy, self.ptrs
        with cupy.cuda.ExternalStream(stream):
            self.means(
                (self.batch * CHANNELS,), (256,), (np.uint64(image), np.uint64(feats), np.int32(SIDE * SIDE))
            )
            self.head(
                (self.batch,),
                (32,),
                (
                    np.uint64(state),
                    np.uint64(feats),
                    np.uint64(self.w_ptr),
                    np.uint64(self.b_ptr),
                    np.uint64(action),
                    np.int32(self.batch),
                ),
            )
        self.enqueues += 1
        return True


def infer(runner: Any, policy: KernelPolicy, image: np.ndarray, state: np.ndarray) -> np.ndarray:
    """TensorRTEngine.infer's sequence: size buffers, bind, upload, execute, download, synchronize."""
    batch = image.shape[0]
    action = np.empty((batch, ACTION), np.float32)
    feats_nbytes = batch * CHANNELS * 4
    ptrs = {
        "image": runner.buffer("image", image.nbytes),
        "robot_state": runner.buffer("robot_state", state.nbytes),
        "feats": runner.buffer("feats", feats_nbytes),
        "action": runner.buffer("action", action.nbytes),
    }
    policy.bind(batch, ptrs["image"], ptrs["robot_state"], ptrs["feats"], ptrs["action"])
    runner.upload(ptrs["image"], image)
    runner.upload(ptrs["robot_state"], state)
    runner.execute(policy.execute_async_v3, (image.shape, state.shape))
    runner.download(action, ptrs["action"])
    runner.synchronize()
    return action


def _timed(fn: Any, runs: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _measure(
    runner: Any,
    policy: KernelPolicy,
    rng: Any,
    batch: int,
    runs: int,
    graph: bool,
    w: np.ndarray,
    bias: np.ndarray,
) -> dict[str, Any]:
    image = rng.standard_normal((batch, CHANNELS, SIDE, SIDE)).astype(np.float32)
    state = rng.standard_normal((batch, STATE)).astype(np.float32)
    got = infer(runner, policy, image, state)
    err = float(np.abs(got - reference(image, state, w, bias)).max())
    lat = _timed(lambda: infer(runner, policy, image, state), runs)
    shapes = (image.shape, state.shape)

    def execute_only() -> None:  # the engine time alone: one execute + synchronize (replay vs plain enqueue)
        runner.execute(policy.execute_async_v3, shapes)
        runner.synchronize()

    exe = _timed(execute_only, runs)
    return {
        "variant": "cuda-graph" if graph else "plain enqueue",
        "batch": batch,
        "input_mb": round((image.nbytes + state.nbytes) / 1e6, 3),
        "infer_p50_ms": statistics.median(lat),
        "infer_p99_ms": _pct(lat, 99),
        "execute_p50_ms": statistics.median(exe),
        "execute_p99_ms": _pct(exe, 99),
        "h2d_gb_per_s": round((image.nbytes + state.nbytes) / (statistics.median(lat) / 1e3) / 1e9, 2),
        "max_abs_error_vs_numpy": err,
        "captures_so_far": runner.captures,
    }


def run(args: Any = None) -> dict[str, Any]:
    from edge_runtime.backends.trt_cuda import CudaMemory, CudaStreamRunner
    from edge_runtime.device import cuda_gpu, cuda_runtime, probe

    cudart = cuda_runtime()
    if cudart is None:
        raise SystemExit(
            "tensorrt_cuda needs cuda-python (cuda.bindings) and an NVIDIA GPU; neither is here."
        )
    gpu = cuda_gpu()
    if gpu is None:
        raise SystemExit("tensorrt_cuda: cuda-python imports but reports no GPU.")
    runs = getattr(args, "runs", None) or 500
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ACTION, STATE + CHANNELS)).astype(np.float32) * 0.2
    bias = rng.standard_normal(ACTION).astype(np.float32) * 0.1
    result: dict[str, Any] = {
        "cuda_python_module": cudart.__name__,
        "gpu": gpu[0],
        "compute_capability": gpu[1],
        "probe_cuda_runtime": probe().cuda,
        "probe_gpu_visible": probe().gpu_visible,
        "rows": [],
    }

    # Calibrator memory: allocate, copy a calibration batch in, read it back, free.
    mem = CudaMemory()
    calib = rng.standard_normal((8, CHANNELS, SIDE, SIDE)).astype(np.float32)
    ptr = mem.alloc(calib.nbytes)
    mem.copy_in(ptr, calib)
    back = np.empty_like(calib)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    assert int(cudart.cudaMemcpy(back.ctypes.data, ptr, back.nbytes, kind)[0]) == 0
    mem.free(ptr)
    result["calibrator_batch_roundtrip_exact"] = bool(np.array_equal(back, calib))

    for graph in (False, True):
        runner = CudaStreamRunner(cuda_graph=graph)
        policy = KernelPolicy(runner, w, bias)
        for batch in (1, 8):
            result["rows"].append(_measure(runner, policy, rng, batch, runs, graph, w, bias))
        if graph:
            # Shape changes recapture rather than replay a graph captured for other shapes: 1 → 8 → 1.
            before = runner.captures
            for batch in (1, 8, 1):
                image = rng.standard_normal((batch, CHANNELS, SIDE, SIDE)).astype(np.float32)
                state = rng.standard_normal((batch, STATE)).astype(np.float32)
                got = infer(runner, policy, image, state)
                assert float(np.abs(got - reference(image, state, w, bias)).max()) < 1e-4
            result["recaptures_for_shapes_1_8_1"] = runner.captures - before
            # A capture that fails ends cleanly; that shape then runs plain enqueues, outputs still right.
            policy.fail_next_capture = True
            image = rng.standard_normal((4, CHANNELS, SIDE, SIDE)).astype(np.float32)
            state = rng.standard_normal((4, STATE)).astype(np.float32)
            before = runner.captures
            outs = [infer(runner, policy, image, state) for _ in range(3)]
            ref = reference(image, state, w, bias)
            result["failed_capture_falls_back"] = bool(
                runner.captures == before and all(np.abs(o - ref).max() < 1e-4 for o in outs)
            )
        runner.close()
    by = {(r["variant"], r["batch"]): r for r in result["rows"]}
    for batch in (1, 8):
        result[f"batch{batch}_execute_speedup_graph"] = (
            by[("plain enqueue", batch)]["execute_p50_ms"] / by[("cuda-graph", batch)]["execute_p50_ms"]
        )
    result["machine"] = {
        "python": platform.python_version(),
        "note": "NOT a Jetson and NOT TensorRT: the backend's CUDA plumbing (cuda-python) on a data-centre "
        "GPU; the TensorRT enqueue is replaced by two CUDA kernels of our own (channel means + tanh head).",
    }
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main() -> None:
    from bench.__main__ import render

    parser = argparse.ArgumentParser(description=(__doc__ or NAME).splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)  # `python -m bench` has its own --runs
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(render(NAME, result))


if __name__ == "__main__":
    main()
