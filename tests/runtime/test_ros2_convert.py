"""Image and array conversion: values computed by hand, not by the code under test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge_runtime.bundle import TensorSpec
from edge_runtime.ros2.convert import (
    ENCODINGS,
    BadMessage,
    ImageInput,
    VectorInput,
    decode_image,
    resize_bilinear,
)
from tests.runtime.ros2_support import need_cyclonedds

NCHW = TensorSpec("image", "float32", ("batch", 3, 4, 6))


def img(pixels: np.ndarray, encoding: str, big: bool = False, pad: int = 0, **kw: object) -> SimpleNamespace:
    h, w = pixels.shape[:2]
    arr = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<"))
    rows = arr.reshape(h, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    fields = dict(
        height=h, width=w, encoding=encoding, is_bigendian=int(big), step=rows.shape[1], data=rows.tobytes()
    )
    fields.update(kw)
    return SimpleNamespace(**fields)


def test_rgb8_to_nchw_unit_range() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = ImageInput(NCHW)(img(pixels, "rgb8"))
    assert out.shape == (1, 3, 4, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], pixels[..., 0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 2], pixels[..., 2] / 255.0, rtol=1e-6)


def test_bgr8_and_bgra8_reach_the_model_as_rgb() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    want = ImageInput(NCHW)(img(rgb, "rgb8"))
    np.testing.assert_array_equal(ImageInput(NCHW)(img(rgb[..., ::-1].copy(), "bgr8")), want)
    bgra = np.concatenate([rgb[..., ::-1], np.full((4, 6, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(ImageInput(NCHW)(img(bgra, "bgra8")), want)


def test_row_padding_in_step_is_skipped() -> None:
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(decode_image(img(rgb, "rgb8", pad=5)), rgb)


def test_mono8_is_repeated_for_three_channels_and_nhwc_layout() -> None:
    mono = np.arange(24, dtype=np.uint8).reshape(4, 6, 1)
    out = ImageInput(TensorSpec("x", "float32", (1, 4, 6, 3)))(img(mono, "mono8"))
    assert out.shape == (1, 4, 6, 3)
    for c in range(3):
        np.testing.assert_allclose(out[0, ..., c], mono[..., 0] / 255.0, rtol=1e-6)


def test_rgb_to_one_channel_model_is_luma() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255
    out = ImageInput(TensorSpec("x", "float32", (1, 1, 4, 6)))(img(rgb, "rgb8"))
    np.testing.assert_allclose(out, 0.299, rtol=1e-5)


def test_16_bit_big_endian_and_float_encodings() -> None:
    mono16 = np.full((4, 6, 1), 65535, np.uint16)
    out = ImageInput(TensorSpec("x", "float32", (1, 1, 4, 6)))(img(mono16, "mono16", big=True))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    f = np.random.default_rng(2).standard_normal((4, 6, 3)).astype(np.float32)
    out = ImageInput(NCHW)(img(f, "32FC3"))
    np.testing.assert_array_equal(out[0], f.transpose(2, 0, 1))  # floats are not scaled


def test_uint8_model_input_gets_raw_pixels() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = ImageInput(TensorSpec("x", "uint8", (1, 3, 4, 6)))(img(rgb, "rgb8"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], rgb.transpose(2, 0, 1))


def test_resize_bilinear_on_pixel_centres() -> None:
    src = np.array([[0.0, 10.0], [20.0, 30.0]], np.float32)[..., None]
    up = resize_bilinear(src, 4, 4)[..., 0]
    # centres of the 4 outputs map to -0.25, 0.25, 0.75, 1.25 → clamped: 0, .25, .75, 1
    np.testing.assert_allclose(up[0], [0, 2.5, 7.5, 10], atol=1e-5)
    np.testing.assert_allclose(up[:, 0], [0, 5, 15, 20], atol=1e-5)
    down = resize_bilinear(np.arange(16, dtype=np.float32).reshape(4, 4, 1), 2, 2)[..., 0]
    np.testing.assert_allclose(down, [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)  # mean of each 2×2 block
    const = np.full((37, 53, 3), 0.25, np.float32)
    np.testing.assert_allclose(resize_bilinear(const, 224, 224), 0.25, atol=1e-6)


def test_image_is_resized_to_the_model_size() -> None:
    pixels = np.full((480, 640, 3), 51, np.uint8)
    out = ImageInput(TensorSpec("image", "float32", ("batch", 3, 224, 224)))(img(pixels, "rgb8"))
    assert out.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(out, 0.2, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"encoding": "yuv422"}, "encoding", "not supported"),
        ({"data": b"\0" * 10}, "size", "needs 72"),
        ({"step": 5}, "size", "shorter than one rgb8 row"),
        ({"height": 0, "data": b""}, "size", "at least 1 pixel"),
    ],
)
def test_bad_images_are_refused_with_one_sentence(change: dict[str, object], reason: str, words: str) -> None:
    msg = img(np.zeros((4, 6, 3), np.uint8), "rgb8")
    vars(msg).update(change)
    with pytest.raises(BadMessage) as err:
        ImageInput(NCHW)(msg)
    assert err.value.reason == reason and words in str(err.value) and "\n" not in str(err.value)


def test_every_listed_encoding_decodes() -> None:
    for name, enc in ENCODINGS.items():
        pixels = np.ones((2, 3, enc.channels), np.dtype(enc.dtype))
        assert decode_image(img(pixels, name)).shape[:2] == (2, 3), name


def arr(values: list[float], offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(layout=SimpleNamespace(data_offset=offset, dim=[]), data=values)


def test_vector_input_size_offset_and_nan() -> None:
    vec = VectorInput(TensorSpec("robot_state", "float32", ("batch", 4)))
    np.testing.assert_array_equal(vec(arr([9, 1, 2, 3, 4], offset=1)), [[1, 2, 3, 4]])
    with pytest.raises(BadMessage, match="has 3 values; the model needs 4"):
        vec(arr([1, 2, 3]))
    with pytest.raises(BadMessage, match="NaN"):
        vec(arr([1, 2, float("nan"), 4]))


def test_action_message_layout() -> None:
    need_cyclonedds()
    from edge_runtime.ros2.convert import to_float32_multiarray

    msg = to_float32_multiarray(np.arange(7, dtype=np.float32)[None], "action")
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("action", 7, 7)]
    assert msg.data == list(range(7))
    grid = to_float32_multiarray(np.zeros((1, 2, 3), np.float32), "a")
    assert [(d.size, d.stride) for d in grid.layout.dim] == [(2, 6), (3, 3)]
