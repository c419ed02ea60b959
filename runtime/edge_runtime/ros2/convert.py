"""ROS 2 messages ↔ model tensors: decode ``sensor_msgs/Image`` into the model's image input and map
``std_msgs/Float32MultiArray`` to and from arrays, checking sizes so a bad message is refused, not guessed.

Image scaling (documented in docs/ros2.md): 8-bit encodings are multiplied by ``pixel_scale`` (default 1/255,
so pixels land in [0, 1]); 16-bit encodings are first divided by 257 (to the 8-bit range), then scaled the
same way; float encodings (32FC1, 32FC3) are passed through unscaled. Colour images reach the model in RGB
order (bgr8/bgra8 are swapped, alpha dropped); a 1-channel image is repeated for a 3-channel model and a colour
image is turned to luma (BT.601) for a 1-channel model. The image is resized to the model's H×W with bilinear
interpolation on pixel centres (what OpenCV's INTER_LINEAR does), then laid out NCHW or NHWC as the model's
input is. A model input of dtype uint8 gets the resized pixels unscaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from edge_runtime.bundle import TensorSpec
from edge_runtime.errors import EdgeError
from edge_runtime.ros2._compat import image_bytes


class BadMessage(EdgeError):
    """A received message cannot be turned into a model input; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, sentence: str) -> None:
        super().__init__(sentence)
        self.reason = reason


@dataclass(frozen=True)
class Encoding:
    channels: int
    dtype: str  # numpy base type; byte order comes from is_bigendian
    order: str  # channel order as stored: "rgb", "bgr", "rgba", "bgra", "mono"


ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(3, "u1", "rgb"),
    "bgr8": Encoding(3, "u1", "bgr"),
    "rgba8": Encoding(4, "u1", "rgba"),
    "bgra8": Encoding(4, "u1", "bgra"),
    "mono8": Encoding(1, "u1", "mono"),
    "8UC1": Encoding(1, "u1", "mono"),
    "8UC3": Encoding(3, "u1", "rgb"),  # no colour meaning in the name: taken as stored
    "rgb16": Encoding(3, "u2", "rgb"),
    "bgr16": Encoding(3, "u2", "bgr"),
    "mono16": Encoding(1, "u2", "mono"),
    "16UC1": Encoding(1, "u2", "mono"),
    "32FC1": Encoding(1, "f4", "mono"),
    "32FC3": Encoding(3, "f4", "rgb"),
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_image(msg: Any) -> tuple[Encoding, np.dtype, int]:
    """Check an Image message without copying its pixels; return its encoding, pixel dtype and row bytes.

    Checks the encoding, that ``step`` holds a row and that ``data`` is exactly ``step × height`` bytes.
    """
    enc = ENCODINGS.get(msg.encoding)
    if enc is None:
        raise BadMessage(
            "encoding",
            f"Image encoding {msg.encoding!r} is not supported; use one of {', '.join(ENCODINGS)}.",
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(enc.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = width * enc.channels * dtype.itemsize
    if height <= 0 or width <= 0:
        raise BadMessage("size", f"Image is {width}x{height}; both sides must be at least 1 pixel.")
    if step < row:
        raise BadMessage(
            "size",
            f"Image step {step} is shorter than one {msg.encoding} row of {width} pixels ({row} bytes).",
        )
    if len(msg.data) != step * height:
        raise BadMessage(
            "size",
            f"Image data has {len(msg.data)} bytes; {width}x{height} {msg.encoding} with step {step} needs {step * height}.",
        )
    return enc, dtype, row


def _stored_pixels(msg: Any) -> tuple[np.ndarray, Encoding]:
    """The checked pixels as H×W×C in stored channel order, without a copy where the layout allows."""
    enc, dtype, row = check_image(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    rows = np.frombuffer(image_bytes(msg.data), dtype=np.uint8).reshape(height, step)[:, :row]
    if dtype.itemsize == 1:
        pixels = rows.view(dtype)
    else:  # rows may not be aligned for the wider type, and may need a byte swap
        pixels = rows.copy().view(dtype).astype(dtype.newbyteorder("="), copy=False)
    return pixels.reshape(height, width, enc.channels), enc


def _to_rgb(pixels: np.ndarray, enc: Encoding) -> np.ndarray:
    if enc.order in ("bgr", "bgra"):
        return pixels[..., [2, 1, 0]]
    if enc.order == "rgba":
        return pixels[..., :3]
    return pixels


def decode_image(msg: Any) -> np.ndarray:
    """An Image message as an H×W×C array in RGB (or mono) order, in its stored dtype (native byte order)."""
    pixels, enc = _stored_pixels(msg)
    return _to_rgb(pixels, enc)


def _axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0, src - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H×W×C array to float32 with bilinear interpolation on pixel centres (identity at equal size).

    Rows are gathered before the float conversion, so a large camera frame is never converted whole.
    """
    if img.shape[:2] == (height, width):
        return img.astype(np.float32)
    y0, y1, wy = _axis(img.shape[0], height)
    x0, x1, wx = _axis(img.shape[1], width)
    top, bottom = img[y0].astype(np.float32), img[y1].astype(np.float32)
    rows = top + (bottom - top) * wy[:, None, None]
    left, right = rows[:, x0], rows[:, x1]
    return left + (right - left) * wx[None, :, None]


class ImageInput:
    """Turns Image messages into one model input (batch 1), following the rules in the module docstring.

    Every step after decoding is linear per pixel, so it runs on the resized (model-sized) image.
    """

    def __init__(self, spec: TensorSpec, pixel_scale: float = 1.0 / 255.0) -> None:
        shape = spec.concrete_shape(1)
        if len(shape) != 4:
            raise EdgeError(f"Model input {spec.name!r} has shape {spec.shape}; an image input needs 4 axes.")
        if shape[1] in (1, 3):
            self.layout, (self.channels, self.height, self.width) = "NCHW", shape[1:]
        elif shape[3] in (1, 3):
            self.layout, (self.height, self.width, self.channels) = "NHWC", shape[1:]
        else:
            raise EdgeError(f"Model input {spec.name!r} has shape {spec.shape}; it needs 1 or 3 channels.")
        self.spec = spec
        self.pixel_scale = pixel_scale

    def __call__(self, msg: Any) -> np.ndarray:
        pixels, enc = _stored_pixels(msg)
        img = _to_rgb(resize_bilinear(pixels, self.height, self.width), enc)
        raw = self.spec.dtype == "uint8"
        if pixels.dtype == np.uint16:
            img /= 257.0
        if pixels.dtype != np.float32 and not raw:
            img *= np.float32(self.pixel_scale)
        if img.shape[2] == 1 and self.channels == 3:
            img = np.repeat(img, 3, axis=2)
        elif img.shape[2] == 3 and self.channels == 1:
            img = (img @ _LUMA)[..., None]
        if raw:
            img = np.clip(np.rint(img), 0, 255)
        if self.layout == "NCHW":
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img[None], dtype=np.dtype(self.spec.dtype))


class VectorInput:
    """Turns Float32MultiArray messages into one model input of fixed size (batch 1)."""

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.shape = spec.concrete_shape(1)
        self.size = int(np.prod(self.shape))

    def __call__(self, msg: Any) -> np.ndarray:
        offset = int(msg.layout.data_offset)
        values = np.asarray(msg.data, dtype=np.float32)[offset:]
        if values.size != self.size:
            raise BadMessage(
                "size",
                f"Float32MultiArray for {self.spec.name!r} has {values.size} values; the model needs {self.size}.",
            )
        if not np.isfinite(values).all():
            raise BadMessage(
                "value", f"Float32MultiArray for {self.spec.name!r} holds NaN or infinite values."
            )
        return values.reshape(self.shape).astype(np.dtype(self.spec.dtype), copy=False)


def to_float32_multiarray(array: np.ndarray, label: str) -> Any:
    """A Float32MultiArray holding ``array`` (batch axis dropped), one layout dimension per remaining axis."""
    from edge_runtime.ros2.msgs import Float32MultiArray, MultiArrayDimension, MultiArrayLayout

    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim > 1 and arr.shape[0] == 1:
        arr = arr[0]
    dims, stride = [], int(arr.size)
    for axis, size in enumerate(arr.shape):
        dims.append(
            MultiArrayDimension(label=label if axis == 0 else f"{label}_{axis}", size=size, stride=stride)
        )
        stride //= max(size, 1)
    layout = MultiArrayLayout(dim=cast(Any, dims), data_offset=0)
    return Float32MultiArray(layout=layout, data=cast(Any, arr.ravel().tolist()))
