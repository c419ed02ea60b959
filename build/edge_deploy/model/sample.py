"""The sample policy shipped with the package: a small image + robot-state → action network.

It lets the whole pipeline (convert, bench, images, rollout) run without downloading a model. Weights
are made in code from a fixed seed, so every machine writes the same TorchScript file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGE_SHAPE = (3, 224, 224)
STATE_DIM = 48
ACTION_DIM = 7
SEED = 20240601


def _conv(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]


class SamplePolicy(nn.Module):
    """Conv image encoder + MLP on robot state, fused into an action head."""

    def __init__(self) -> None:
        super().__init__()
        # stride 4, 2, 2, 2: 224 → 56 → 28 → 14 → 7, then global average pooling
        self.encoder = nn.Sequential(
            *_conv(3, 16, 5, 4),
            *_conv(16, 32, 3, 2),
            *_conv(32, 64, 3, 2),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.state = nn.Sequential(nn.Linear(STATE_DIM, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, ACTION_DIM), nn.Tanh())

    def forward(self, image: torch.Tensor, robot_state: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(image), self.state(robot_state)], dim=1))


def build_policy(seed: int = SEED) -> SamplePolicy:
    """Return the sample policy as an ``nn.Module`` in eval mode (deterministic weights)."""
    gen = torch.Generator().manual_seed(seed)
    model = SamplePolicy()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel()) ** 0.5))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def calibration_set(count: int = 64, seed: int = SEED + 1) -> dict[str, np.ndarray]:
    """Representative inputs: smooth images (gradients, blobs, low-frequency noise) and bounded joint states.

    Pure white noise would calibrate INT8 ranges that real camera frames never reach.
    """
    rng = np.random.default_rng(seed)
    _, h, w = IMAGE_SHAPE
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")
    images = np.empty((count, *IMAGE_SHAPE), dtype=np.float32)
    for i in range(count):
        for c in range(3):
            gx, gy, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            coarse = rng.normal(0.0, 0.15, (8, 8))
            low = np.kron(coarse, np.ones((h // 8, w // 8)))
            img = 0.5 + 0.25 * (gx * xx + gy * yy) + 0.1 * np.sin(6 * xx + phase) + 0.3 * blob + low
            # normalized like an ImageNet-style preprocessing (mean 0.45, std 0.225)
            images[i, c] = ((np.clip(img, 0.0, 1.0) - 0.45) / 0.225).astype(np.float32)
    states = np.clip(rng.normal(0.0, 0.5, (count, STATE_DIM)), -1.5, 1.5).astype(np.float32)
    return {"image": images, "robot_state": states}


def _atomic_write(target: Path, write: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; models are shared with build contexts
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sample_policy(
    output: str | Path, calibration_out: str | Path | None = None, calibration_count: int = 64
) -> dict[str, Any]:
    """Write the sample policy as TorchScript (and optionally its calibration npz); return what was written."""
    from edge_deploy.errors import OutputError

    out = Path(output)
    model = build_policy()
    example = (torch.zeros(1, *IMAGE_SHAPE), torch.zeros(1, STATE_DIM))
    with warnings.catch_warnings():  # torch ≥ 2.9 marks TorchScript deprecated; it is still what robots load
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(model, example)
    written: dict[str, Any] = {"model": str(out)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _atomic_write(out, lambda p: torch.jit.save(scripted, str(p)))
        if calibration_out is not None:
            calib = calibration_set(calibration_count)
            cal_path = Path(calibration_out)

            def save_npz(p: Path) -> None:
                with p.open("wb") as f:
                    np.savez(f, **calib)  # type: ignore[arg-type]

            _atomic_write(cal_path, save_npz)
            written["calibration"] = str(cal_path)
            written["calibration_samples"] = calibration_count
    except PermissionError as exc:
        raise OutputError(f"Cannot write {exc.filename or out}: permission denied.") from None
    except OSError as exc:
        raise OutputError(f"Cannot write {exc.filename or out}: {exc.strerror or exc}.") from None
    written["parameters"] = sum(p.numel() for p in model.parameters())
    written["bytes"] = out.stat().st_size
    return written
