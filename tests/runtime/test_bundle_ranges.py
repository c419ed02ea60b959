"""Shape ranges of dynamic non-batch axes in the bundle: schema 2 records them, schema 1 bundles still load,
``check_feeds`` accepts sizes inside a range and refuses others in one sentence, and the ranges are part of
the engine cache key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions, check_feeds
from edge_runtime.bundle import AxisRange, BatchProfile, BundleManifest, ModelBundle, TensorSpec, sha256_file
from edge_runtime.cache import engine_key
from edge_runtime.device import DeviceIdentity
from edge_runtime.errors import BundleError, InputError

OBS = TensorSpec(
    "obs", "float32", ("batch", 3, "H", "W"), (AxisRange(2, 96, 160, 224), AxisRange(3, 96, 224, 224))
)
MASK = TensorSpec(
    "mask", "float32", ("batch", 1, "H", "W"), (AxisRange(2, 96, 160, 224), AxisRange(3, 96, 224, 224))
)
STATE = TensorSpec("state", "float32", ("batch", 6))
BATCH = BatchProfile(1, 2, 4)


def _manifest(inputs: list[TensorSpec]) -> BundleManifest:
    return BundleManifest(
        precision="fp32",
        opset=17,
        inputs=inputs,
        outputs=[TensorSpec("action", "float32", ("batch", 4))],
        batch=BATCH,
        files={"model.onnx": "0" * 64},
    )


def _feeds(batch: int, h: int, w: int, mask_h: int | None = None) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((batch, 3, h, w), np.float32),
        "mask": np.zeros((batch, 1, mask_h or h, w), np.float32),
        "state": np.zeros((batch, 6), np.float32),
    }


def test_ranges_round_trip_as_schema_2_and_plain_bundles_stay_schema_1() -> None:
    ranged = _manifest([OBS, STATE]).to_dict()
    assert ranged["schema_version"] == 2
    assert ranged["inputs"][0]["ranges"] == {
        "2": {"min": 96, "opt": 160, "max": 224},
        "3": {"min": 96, "opt": 224, "max": 224},
    }
    back = BundleManifest.from_dict(json.loads(json.dumps(ranged)))
    assert back.inputs[0] == OBS and back.inputs[1] == STATE
    assert back.shape_ranges() == {
        "obs": {"min": [1, 3, 96, 96], "opt": [2, 3, 160, 224], "max": [4, 3, 224, 224]}
    }
    plain = _manifest([STATE]).to_dict()
    assert plain["schema_version"] == 1 and "ranges" not in plain["inputs"][0]


def test_schema_1_bundle_written_before_ranges_loads(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    raw: dict[str, Any] = {
        "schema_version": 1,
        "precision": "fp32",
        "opset": 13,
        "inputs": [
            {"name": "state", "dtype": "float32", "shape": ["batch", 6], "dynamic_axes": {"0": "batch"}}
        ],
        "outputs": [
            {"name": "action", "dtype": "float32", "shape": ["batch", 4], "dynamic_axes": {"0": "batch"}}
        ],
        "batch": {"min": 1, "opt": 1, "max": 8},
        "files": {"model.onnx": sha256_file(tmp_path / "model.onnx")},
    }
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    b = ModelBundle.load(tmp_path)
    assert b.inputs == [STATE] and not b.manifest.has_ranges and b.manifest.shape_ranges() == {}


@pytest.mark.parametrize(
    ("ranges", "version", "message"),
    [
        (
            {"2": {"min": 200, "opt": 160, "max": 224}},
            2,
            r"axis 2 has range 200,160,224; it needs 1 ≤ MIN ≤ OPT ≤ MAX",
        ),
        (
            {"1": {"min": 1, "opt": 3, "max": 3}},
            2,
            r"range for axis 1, which is not a dynamic non-batch axis",
        ),
        ({}, 3, r"schema version 3; this edge-runtime reads versions 1, 2"),
    ],
)
def test_bad_ranges_and_unknown_schema_are_refused_in_one_sentence(
    ranges: dict[str, Any], version: int, message: str
) -> None:
    raw = _manifest([OBS]).to_dict()
    raw["inputs"][0]["ranges"] = ranges
    raw["schema_version"] = version
    with pytest.raises(BundleError, match=message):
        BundleManifest.from_dict(raw)


def test_check_feeds_accepts_any_shape_inside_the_range() -> None:
    specs = [OBS, MASK, STATE]
    assert check_feeds(specs, _feeds(1, 96, 96), BATCH) == 1
    assert check_feeds(specs, _feeds(4, 224, 130), BATCH) == 4
    assert check_feeds(specs, _feeds(2, 150, 224), BATCH) == 2


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (
            _feeds(1, 240, 100),
            "Input 'obs' has size 240 on axis 2, outside the model's range 96..224 for that axis.",
        ),
        (
            _feeds(1, 100, 64),
            "Input 'obs' has size 64 on axis 3, outside the model's range 96..224 for that axis.",
        ),
        (
            _feeds(1, 100, 100, mask_h=120),
            "Input 'mask' has size 120 on axis 2 but input 'obs' has size 100 on axis 2; the model needs them "
            "equal (H).",
        ),
        (_feeds(5, 100, 100), "Batch size 5 is outside the engine's profile 1..4."),
    ],
)
def test_check_feeds_refuses_a_shape_outside_the_range_in_one_sentence(
    feeds: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InputError) as err:
        check_feeds([OBS, MASK, STATE], feeds, BATCH)
    assert str(err.value) == message


def test_engine_cache_key_includes_the_ranges(tmp_path: Path) -> None:
    device = DeviceIdentity("aarch64", "36.4.0", "jetson-orin-nano", "Orin", "8.7", "cortex-a78ae")
    narrow = TensorSpec("obs", "float32", OBS.shape, (AxisRange(2, 96, 160, 192), OBS.ranges[1]))
    keys = {
        engine_key("s" * 64, "tensorrt", "10.3.0", device, BuildOptions(shape_ranges=shape_ranges)).digest
        for shape_ranges in (
            (),
            (("obs", OBS.profile_shapes(BATCH)),),
            (("obs", narrow.profile_shapes(BATCH)),),
        )
    }
    assert len(keys) == 3
    plain = engine_key("s" * 64, "tensorrt", "10.3.0", device, BuildOptions())
    assert "shape_ranges" not in plain.parts  # bundles without ranges keep the keys they had
