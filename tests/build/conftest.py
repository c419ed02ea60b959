"""Session fixtures for the model pipeline tests: the sample policy, its calibration set, and bundles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

CALIBRATION_SAMPLES = 24  # enough for stable int8 scales, small enough to keep the suite fast


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_deploy.model.sample import write_sample_policy

    root = tmp_path_factory.mktemp("sample")
    written = write_sample_policy(root / "policy.pt", root / "calib.npz", CALIBRATION_SAMPLES)
    return Path(written["model"]), Path(written["calibration"])


@pytest.fixture(scope="session")
def make_bundle(
    tmp_path_factory: pytest.TempPathFactory, sample_files: tuple[Path, Path]
) -> Callable[..., object]:
    """Convert the sample policy once per precision for the whole session; returns the ConvertResult."""
    from edge_deploy.model import ConvertOptions, convert

    cache: dict[str, object] = {}
    model, calib = sample_files

    def make(precision: str, embed_calibration: int = 0) -> object:
        key = f"{precision}-{embed_calibration}"
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bundle-{key}") / "bundle"
            cache[key] = convert(
                model,
                out,
                ConvertOptions(precision=precision, calibration=calib, embed_calibration=embed_calibration),
            )
        return cache[key]

    return make
