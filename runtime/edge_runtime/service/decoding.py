"""Request bodies to arrays: /v1's JSON and npz archives, checked against the model before anything large
is built (npz members are inflated only up to what their headers declare, within the model's inputs)."""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime import oip
from edge_runtime.backends import check_feeds
from edge_runtime.bundle import BatchProfile, TensorSpec
from edge_runtime.errors import InputError, RequestError

NPZ = "application/x-npz"
NPY_HEADER_MAX = 10_000  # numpy's own limit on an .npy header's length (np.lib.format)
NPZ_READ_CHUNK = 1 << 20  # inflate at most this much per read: a member's stream is never trusted


def decode_json(body: bytes, specs: list[Any]) -> dict[str, np.ndarray]:
    """``{"inputs": {"image": [[...]], ...}}``; numbers are cast to the model's dtype, nothing else is.

    NaN, Infinity and numbers past the dtype's range are refused (400): JSON cannot carry them, and an
    inference fed one answers with values the JSON reply cannot carry either.
    """
    doc = oip.strict_json(body, "The request body", reason="bad_json")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError(400, "bad_json", 'The JSON body must be an object with an "inputs" object.')
    dtypes = {s.name: s.dtype for s in specs}
    feeds: dict[str, np.ndarray] = {}
    for name, value in doc["inputs"].items():
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, RecursionError):
            raise RequestError(
                400, "bad_input", f"Input {name!r} is not a rectangular array of numbers."
            ) from None
        if arr.dtype.kind not in "biuf" or (arr.size == 0 and arr.ndim <= 1):
            raise RequestError(400, "bad_input", f"Input {name!r} is not a rectangular array of numbers.")
        if name in dtypes:
            with np.errstate(all="ignore"):
                arr = arr.astype(dtypes[name], copy=False)
        feeds[str(name)] = oip.finite(name, arr, reason="bad_input")
    return feeds


_NOT_NPZ = "The request body is not a complete npz archive."
_EOCD = struct.Struct("<4s4H2LH")  # zip end-of-central-directory record
# What a malformed or damaged archive makes zipfile, zlib and numpy's header parser raise.
_NPZ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    ValueError,
    SyntaxError,
    TypeError,
    KeyError,
    IndexError,
    OSError,
    EOFError,
    NotImplementedError,
    RecursionError,
)


@dataclass(frozen=True)
class _NpyMember:
    """An npz member whose .npy header was read (and nothing else): where it is and what it declares."""

    info: zipfile.ZipInfo
    header_bytes: int
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def placeholder(self) -> np.ndarray:
        """An array of the declared dtype and shape that takes no memory, for ``check_feeds``."""
        return np.broadcast_to(np.zeros((), self.dtype), self.shape)

    def check_declared_size(self) -> None:
        """The zip's declared size must be the .npy header's; reading stops there whatever the stream holds."""
        expected = self.header_bytes + self.data_bytes
        if self.info.file_size != expected:
            raise RequestError(
                413 if self.info.file_size > expected else 400,
                "bad_npz",
                f"The npz member {self.info.filename!r} declares {self.info.file_size} bytes uncompressed but "
                f"its .npy header (shape {list(self.shape)}, {self.dtype}) makes {expected}.",
            )


def decode_npz(body: bytes, specs: list[TensorSpec], batch: BatchProfile) -> dict[str, np.ndarray]:
    """An ``np.savez`` / ``np.savez_compressed`` archive, checked against the model before anything inflates.

    Deflate inflates ~1000:1 (bzip2 and LZMA far more, and zipfile cannot bound them), so a body under the
    size limit can hold tens of GB. In order: the central directory's size, each member's method (stored
    or deflate) and its .npy header (bounded reads), then names, dtypes, shapes and batch together
    (``check_feeds``, the same sentences as JSON), then each zip-declared size against its header's. Only
    then is each member read in bounded chunks into an array of exactly its header's size; a stream longer
    or shorter than that is refused. So the total inflated is capped by the model's inputs at their
    largest batch. dtypes must match exactly (no silent casts of binary data).
    """
    _check_zip_directory(body, len(specs))
    by_name = {s.name: s for s in specs}
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            members: dict[str, _NpyMember | None] = {}
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if name in members:
                    raise RequestError(400, "bad_npz", f"The npz archive holds {name!r} twice.")
                members[name] = _npy_member(zf, info) if name in by_name else None
            placeholders = {
                name: np.zeros(0) if m is None else m.placeholder() for name, m in members.items()
            }
            try:
                check_feeds(specs, placeholders, batch)
            except InputError as exc:
                raise RequestError(400, "bad_input", str(exc)) from None
            known = {name: m for name, m in members.items() if m is not None}  # every member, by now
            for m in known.values():
                m.check_declared_size()
            return {name: _inflate(zf, m) for name, m in known.items()}
    except RequestError:
        raise
    except _NPZ_ERRORS:
        raise RequestError(400, "bad_npz", _NOT_NPZ) from None


def _check_zip_directory(body: bytes, inputs: int) -> None:
    """Refuse an archive whose central directory is far larger than one member per input, before zipfile
    parses it (it builds an object per entry, and 64 MiB of directory is ~1.4 million entries)."""
    at = body.rfind(b"PK\x05\x06", max(0, len(body) - _EOCD.size - 0xFFFF))
    if at < 0 or len(body) - at < _EOCD.size:
        raise RequestError(400, "bad_npz", _NOT_NPZ)
    entries, directory_bytes = _EOCD.unpack_from(body, at)[4:6]
    zip64 = at >= 20 and body[at - 20 : at - 16] == b"PK\x06\x07"  # numpy never needs one below 4 GiB
    most = inputs + 16
    if zip64 or entries > most or directory_bytes > most * 1024:
        raise RequestError(
            400,
            "bad_npz",
            f"The npz archive's directory lists {entries} members in {directory_bytes} bytes; the model "
            f"takes {inputs} inputs, one array each.",
        )


def _npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _NpyMember:
    """Check a member's method, then read its .npy header (bounded reads: at most ~10 KB inflates)."""
    where = f"The npz member {info.filename!r}"
    if info.flag_bits & 0x1:
        raise RequestError(400, "bad_npz", f"{where} is encrypted.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise RequestError(
            400,
            "bad_npz",
            f"{where} uses zip compression method {info.compress_type}; send np.savez (stored) or "
            "np.savez_compressed (deflate).",
        )
    with zf.open(info) as f:
        head = read_exactly(f, 10)  # magic, version, and a 2-byte header length (4 bytes from version 2)
        if head[:6] != b"\x93NUMPY" or head[6] not in (1, 2, 3):
            raise RequestError(400, "bad_npz", f"{where} is not an .npy array.")
        if head[6] > 1:
            head += read_exactly(f, 2)
        length = int.from_bytes(head[8:], "little")
        if length > NPY_HEADER_MAX:
            raise RequestError(400, "bad_npz", f"{where} has a {length}-byte .npy header.")
        raw = io.BytesIO(head + read_exactly(f, length))
    version = np.lib.format.read_magic(raw)
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    try:
        shape, fortran, dtype = read_header(raw)
    except Exception:  # numpy parses the header with ast.literal_eval: damaged text raises all kinds
        raise RequestError(400, "bad_npz", f"{where} has an .npy header that does not parse.") from None
    if any(d < 0 for d in shape):
        raise RequestError(400, "bad_npz", f"{where} has a negative dimension in its header.")
    return _NpyMember(info, len(raw.getvalue()), dtype, tuple(shape), bool(fortran))


def read_exactly(f: Any, n: int) -> bytes:
    """``n`` bytes or EOFError: a short read is a damaged archive or a closed pipe, never a partial value."""
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return bytes(data)


def _inflate(zf: zipfile.ZipFile, m: _NpyMember) -> np.ndarray:
    """The member's data, read in ``NPZ_READ_CHUNK`` pieces into an array of exactly its header's size."""
    out = np.empty(math.prod(m.shape), dtype=m.dtype)
    raw = out.view(np.uint8)
    with zf.open(m.info) as f:
        read_exactly(f, m.header_bytes)
        done = 0
        while done < raw.size:
            chunk = f.read(min(NPZ_READ_CHUNK, raw.size - done))
            if not chunk:
                raise RequestError(
                    400,
                    "bad_npz",
                    f"The npz member {m.info.filename!r} ends before the data its header declares.",
                )
            raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        if f.read(1):  # reading to the end also checks the member's CRC-32
            raise RequestError(
                400,
                "bad_npz",
                f"The npz member {m.info.filename!r} holds more data than its header declares.",
            )
    if m.fortran:
        return np.ascontiguousarray(out.reshape(m.shape[::-1]).T)
    return out.reshape(m.shape)


def encode_npz(outputs: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **outputs)  # type: ignore[arg-type]
    return buf.getvalue()
