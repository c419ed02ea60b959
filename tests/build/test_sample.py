from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_deploy.model.sample import ACTION_DIM, IMAGE_SHAPE, STATE_DIM, build_policy, calibration_set
from tests.build.cli_helpers import run_cli


def test_weights_are_deterministic_and_seeded() -> None:
    a, b, c = build_policy(), build_policy(), build_policy(seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load: still what robots ship
def test_torchscript_file_loads_without_python_class(sample_files: tuple[Path, Path]) -> None:
    model_path, _ = sample_files
    assert model_path.stat().st_size < 2_000_000
    scripted = torch.jit.load(str(model_path))
    image, state = torch.randn(3, *IMAGE_SHAPE), torch.randn(3, STATE_DIM)
    with torch.no_grad():
        out = scripted(image, state)
        ref = build_policy()(image, state)
    assert out.shape == (3, ACTION_DIM)
    torch.testing.assert_close(out, ref)
    assert float(out.abs().max()) <= 1.0  # tanh head


def test_calibration_set_is_smooth_and_named_like_inputs() -> None:
    calib = calibration_set(8)
    assert set(calib) == {"image", "robot_state"}
    assert calib["image"].shape == (8, *IMAGE_SHAPE) and calib["image"].dtype == np.float32
    assert calib["robot_state"].shape == (8, STATE_DIM) and calib["robot_state"].dtype == np.float32
    img = calib["image"]
    neighbour_step = np.abs(np.diff(img, axis=-1)).mean()
    assert neighbour_step < 0.1 * img.std()  # smooth images, not white noise
    assert np.array_equal(calibration_set(8)["image"], img)  # deterministic


def test_cli_writes_policy_and_calibration(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run_cli(
        capsys,
        "sample-model",
        "-o",
        tmp_path / "p.pt",
        "--calibration-out",
        tmp_path / "c.npz",
        "--samples",
        "4",
    )
    assert rc == 0, out
    assert (tmp_path / "p.pt").is_file()
    with np.load(tmp_path / "c.npz") as npz:
        assert npz["image"].shape == (4, *IMAGE_SHAPE)
    assert "p.pt" in out and "4 calibration samples" in out
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
