"""The Open Inference Protocol routes (KServe v2 / Triton HTTP): server and model metadata, health, infer.

The wire format (JSON header plus binary tensors) lives in ``edge_runtime.oip``; this module maps it onto
the one model this service serves, as version ``oip.MODEL_VERSION``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge_runtime import oip
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import RequestError
from edge_runtime.oip import ProtocolError
from edge_runtime.service.infer import AppState
from edge_runtime.service.limits import INLINE_DECODE_BYTES
from edge_runtime.service.replies import Reply, refusal


def served_model(state: AppState, name: str, version: str | None) -> ModelBundle:
    """The bundle the path names (its model name, version "1" if given); 404 for any other."""
    bundle = state.loaded_bundle()
    if name != bundle.manifest.name or (version is not None and version != oip.MODEL_VERSION):
        shown = name if version is None else f"{name} version {version}"
        raise ProtocolError(
            f"Model {shown!r} is not served here; this service serves {bundle.manifest.name!r} "
            f"version {oip.MODEL_VERSION}.",
            status=404,
            reason="unknown_model",
        )
    return bundle


async def infer(state: AppState, headers: dict[bytes, bytes], receive: Any, params: dict[str, Any]) -> Reply:
    """Binary tensors (Triton's extension) or JSON ``data``; the answer mirrors what the request asked for."""
    bundle = served_model(state, params["name"], params.get("version"))
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding != "identity":
        raise ProtocolError(
            f"Content-Encoding {encoding} is not supported; send the request uncompressed.",
            status=415,
            reason="media_type",
        )
    body = await state.limits.read_body(headers, receive)
    declared = headers.get(oip.HEADER_LENGTH.encode())
    length = oip.parse_header_length(None if declared is None else declared.decode("latin-1"), len(body))
    if (len(body) if length is None else length) <= INLINE_DECODE_BYTES:  # binary tensors cost ~µs
        req = oip.decode_request(body, length, bundle.inputs, bundle.outputs)
    else:
        req = await state.limits.decode_elsewhere("v2", body, length, bundle.inputs, bundle.outputs)
    outputs, _latency_ms = await state.run_engine(req.feeds)
    content, header_length = oip.encode_response(bundle.manifest.name, req, outputs)
    if header_length is None:
        return Reply(200, content, "application/json")
    return Reply(
        200,
        content,
        "application/octet-stream",
        [(oip.HEADER_LENGTH.encode(), str(header_length).encode())],
    )


def _path_model(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version")


async def server(state: AppState, request: Request) -> Response:
    from edge_runtime import __version__

    return JSONResponse({"name": "edge-runtime", "version": __version__, "extensions": oip.EXTENSIONS})


async def live(state: AppState, request: Request) -> Response:
    status, _body = state.service.health()
    return JSONResponse({"live": status == 200}, status_code=status)


async def ready(state: AppState, request: Request) -> Response:
    status, _body = state.service.readiness()
    return JSONResponse({"ready": status == 200}, status_code=status)


async def model_ready(state: AppState, request: Request) -> Response:
    try:
        served_model(state, *_path_model(request))
    except RequestError as exc:
        return refusal(exc).response()
    status, _body = state.service.readiness()
    return JSONResponse({"name": request.path_params["name"], "ready": status == 200}, status_code=status)


async def metadata(state: AppState, request: Request) -> Response:
    try:
        bundle = served_model(state, *_path_model(request))
    except RequestError as exc:
        return refusal(exc).response()
    backend = state.service.backend
    return JSONResponse(
        {
            "name": bundle.manifest.name,
            "versions": [oip.MODEL_VERSION],
            "platform": backend.name if backend is not None else "",
            "inputs": [oip.tensor_metadata(s) for s in bundle.inputs],
            "outputs": [oip.tensor_metadata(s) for s in bundle.outputs],
        }
    )
