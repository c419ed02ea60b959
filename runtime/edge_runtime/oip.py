"""The Open Inference Protocol (KServe v2, what Triton speaks) over HTTP, with Triton's binary tensor extension.

Decoding and encoding only; the routes live in ``edge_runtime.service.v2``. A binary request is a JSON header
(its length in the ``Inference-Header-Content-Length`` header) followed by the raw little-endian bytes of
each input that declares ``parameters.binary_data_size``, in input order; ``np.frombuffer`` reads them
without copying, which is why this path costs microseconds where npz (zipfile) costs ~0.2 ms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.bundle import TensorSpec
from edge_runtime.errors import RequestError

HEADER_LENGTH = "inference-header-content-length"  # HTTP header names are case-insensitive
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"

# OIP tensor datatypes ↔ numpy dtypes (BYTES and BF16 have no numpy equivalent the engines take).
_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
_FROM_DTYPE = {np.dtype(v): k for k, v in _TO_NUMPY.items()}  # keyed by dtype: no ``.name`` per call
_LE_DTYPES = {k: np.dtype(v).newbyteorder("<") for k, v in _TO_NUMPY.items()}


class ProtocolError(RequestError):
    """A request the protocol layer refuses (400 unless said otherwise); the service answers it like any
    other ``RequestError``."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request") -> None:
        super().__init__(status, reason, message)


def datatype(dtype: str | np.dtype) -> str:
    """The OIP datatype name of a numpy dtype (``float32`` → ``FP32``)."""
    return _FROM_DTYPE[np.dtype(dtype)]


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an OIP datatype name (``FP32`` → ``float32``); KeyError for BYTES and BF16."""
    return np.dtype(_TO_NUMPY[name])


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """``{name, datatype, shape}`` with -1 for the dynamic (batch) axis, as model metadata shows it."""
    return {
        "name": spec.name,
        "datatype": datatype(spec.dtype),
        "shape": [-1 if isinstance(d, str) else d for d in spec.shape],
    }


@dataclass
class InferRequest:
    """A decoded request: input arrays, the outputs to return and how (True: binary), the id to echo."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, bool]
    id: str | None = None


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise ProtocolError(f"Input {name!r} needs a shape that is a list of non-negative integers.")
    return tuple(raw)


def _params(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(f"The parameters of {where} must be a JSON object.")
    return raw


def strict_json(text: bytes, what: str, reason: str = "bad_request") -> Any:
    """``json.loads`` for request bodies: a ProtocolError (400, one sentence naming ``what``) for anything that
    is not RFC 8259 JSON, which includes NaN and Infinity (Python's parser takes them, and an inference that
    returns NaN then cannot be answered in JSON) and nesting deeper than the parser's recursion limit."""

    def refuse(constant: str) -> float:
        raise ProtocolError(
            f"{what} has {constant}, which JSON does not allow; send finite numbers "
            "(binary tensors can carry NaN and Infinity).",
            reason=reason,
        )

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ProtocolError(f"{what} is JSON nested too deeply to be a tensor.", reason=reason) from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what} is not valid JSON.", reason=reason) from None


def finite(name: str, arr: np.ndarray, reason: str = "bad_request") -> np.ndarray:
    """``arr`` when every float in it is finite; numbers past the dtype's range (1e39 as FP32) became inf."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(
            f"Input {name!r} has a value that is not finite as {arr.dtype} (NaN, Infinity or out of its "
            "range); send finite numbers.",
            reason=reason,
        )
    return arr


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's byte count from ``Inference-Header-Content-Length`` (None: the body is all JSON)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or int(text) > body_size:
        raise ProtocolError(
            f"The Inference-Header-Content-Length header {value!r} is not a byte count within "
            f"the {body_size}-byte body."
        )
    return int(text)


def decode_request(
    body: bytes,
    header_length: int | None,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> InferRequest:
    """Parse an infer request into arrays; binary data must carry the model's datatype exactly.

    JSON ``data`` (flat or nested, row-major) is cast to the declared datatype, as /v1 casts JSON numbers.
    Names, shapes and the batch profile are checked afterwards by ``check_feeds`` (one shared message set).
    """
    end = len(body) if header_length is None else header_length
    doc = strict_json(body[:end], "The inference request header")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError('The inference request must be a JSON object with an "inputs" list.')
    params = _params("the request", doc.get("parameters"))
    specs = {s.name: s for s in inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = end
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError('Every entry of "inputs" must be an object with a "name" string.')
        name = item["name"]
        if name in feeds:
            raise ProtocolError(f"Input {name!r} appears twice in the request.")
        shape = _shape(name, item.get("shape"))
        dt = item.get("datatype")
        if dt not in _TO_NUMPY:
            raise ProtocolError(
                f"Input {name!r} has datatype {dt!r}; this service takes {', '.join(_TO_NUMPY)}."
            )
        spec = specs.get(name)
        if spec is not None and _FROM_NUMPY[spec.dtype] != dt:
            raise ProtocolError(f"Input {name!r} has datatype {dt}, expected {datatype(spec.dtype)}.")
        iparams = _params(f"input {name!r}", item.get("parameters"))
        if "shared_memory_region" in iparams:
            raise ProtocolError("Shared-memory inputs are not supported; send the data in the request.")
        count = math.prod(shape)
        size = iparams.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise ProtocolError(f"Input {name!r} has both JSON data and binary_data_size.")
            dtype = _LE_DTYPES[dt]
            if type(size) is not int or size != count * dtype.itemsize:
                raise ProtocolError(
                    f"Input {name!r} has binary_data_size {size!r} but shape {list(shape)} of {dt} "
                    f"needs {count * dtype.itemsize} bytes."
                )
            if offset + size > len(body):
                raise ProtocolError(
                    f"The request ends before the binary data of input {name!r} "
                    f"({len(body) - end} bytes follow the header)."
                )
            arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
            if dt == "BOOL" and bool((arr.view(np.uint8) > 1).any()):
                raise ProtocolError(f"Input {name!r} is BOOL but has bytes other than 0 and 1.")
            if not arr.flags.aligned:  # some engines read unaligned buffers slowly or not at all
                arr = arr.copy()
            offset += size
        elif "data" in item:
            arr = _from_json(name, item["data"], dt, shape, count)
        else:
            raise ProtocolError(f"Input {name!r} has neither data nor parameters.binary_data_size.")
        feeds[name] = arr
    if offset != len(body):
        raise ProtocolError(
            f"The request has {len(body) - end} bytes after the JSON header but its inputs "
            f"declare {offset - end}."
        )
    return InferRequest(feeds, _requested(doc, params, outputs), _request_id(doc))


def _from_json(name: str, data: Any, dt: str, shape: tuple[int, ...], count: int) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "biuf":
        raise ProtocolError(f"Input {name!r} has data that is not a rectangular array of numbers.")
    if arr.size != count:
        raise ProtocolError(
            f"Input {name!r} has {arr.size} data elements but shape {list(shape)} needs {count}."
        )
    with np.errstate(all="ignore"):
        return finite(name, arr.astype(_TO_NUMPY[dt], copy=False).reshape(shape))


def _request_id(doc: dict[str, Any]) -> str | None:
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError('The request "id" must be a string.')
    return rid


def _requested(doc: dict[str, Any], params: dict[str, Any], outputs: list[TensorSpec]) -> dict[str, bool]:
    """Output name → binary?; every output when the request names none (Triton's default)."""
    default = params.get("binary_data_output") is True
    names = [s.name for s in outputs]
    wanted = doc.get("outputs")
    if wanted is None:
        return {n: default for n in names}
    if not isinstance(wanted, list):
        raise ProtocolError('The request "outputs" must be a list.')
    chosen: dict[str, bool] = {}
    for item in wanted:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError('Every entry of "outputs" must be an object with a "name" string.')
        name = item["name"]
        if name not in names:
            raise ProtocolError(f"Unknown output {name!r}; the model gives {', '.join(names)}.")
        oparams = _params(f"output {name!r}", item.get("parameters"))
        if oparams.get("classification") or "shared_memory_region" in oparams:
            raise ProtocolError(f"Output {name!r} asks for an extension this service does not support.")
        binary = oparams.get("binary_data", default)
        chosen[name] = binary is True
    return chosen


def _encode(
    doc: dict[str, Any], key: str, tensors: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """``doc[key]`` = one entry per tensor (raw little-endian bytes after the JSON when binary, else flat
    ``data``); returns the body and, when any tensor is binary, the JSON header's length."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr, binary in tensors:
        entry: dict[str, Any] = {"name": name, "datatype": datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    doc[key] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_response(
    model_name: str, request: InferRequest, outputs: Mapping[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (Triton's layout)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if request.id is not None:
        doc["id"] = request.id
    return _encode(
        doc, "outputs", [(name, outputs[name], binary) for name, binary in request.outputs.items()]
    )


def encode_request(
    inputs: Mapping[str, np.ndarray], binary: bool = True, binary_output: bool = True
) -> tuple[bytes, int | None]:
    """A request body as tritonclient sends it (benchmarks and tests; clients normally use tritonclient)."""
    doc: dict[str, Any] = {"parameters": {"binary_data_output": True}} if binary_output else {}
    return _encode(doc, "inputs", [(name, arr, binary) for name, arr in inputs.items()])
