"""The Open Inference Protocol routes (KServe v2 / Triton HTTP): server and model metadata, health, infer.

The wire format (JSON header plus binary tensors) lives in ``edge_runtime.oip``; this module maps it onto
the models (and pipelines) this service serves, each as version ``oip.MODEL_VERSION``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge_runtime import oip
from edge_runtime.errors import RequestError
from edge_runtime.oip import ProtocolError
from edge_runtime.service.infer import AppState
from edge_runtime.service.limits import INLINE_DECODE_BYTES
from edge_runtime.service.models import ServedModel, ServedPipeline
from edge_runtime.service.replies import Reply, refusal


def served_model(state: AppState, name: str, version: str | None) -> ServedModel | ServedPipeline:
    """The model or pipeline the path names (version "1" if given); 404 for any other."""
    service = state.service
    if not service.models:
        raise RequestError(503, "not_ready", "The engine is not loaded yet; retry when /readyz is 200.")
    found = service.models.get(name) or service.pipelines.get(name)
    if found is None or (version is not None and version != oip.MODEL_VERSION):
        shown = name if version is None else f"{name} version {version}"
        names = [*service.models, *service.pipelines]
        served = (
            f"{names[0]!r} version {oip.MODEL_VERSION}"
            if len(names) == 1
            else ", ".join(repr(n) for n in names) + f" (version {oip.MODEL_VERSION})"
        )
        raise ProtocolError(
            f"Model {shown!r} is not served here; this service serves {served}.",
            status=404,
            reason="unknown_model",
        )
    return found


async def infer(state: AppState, headers: dict[bytes, bytes], receive: Any, params: dict[str, Any]) -> Reply:
    """Binary tensors (Triton's extension) or JSON ``data``; the answer mirrors what the request asked for."""
    target = served_model(state, params["name"], params.get("version"))
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
        req = oip.decode_request(body, length, target.inputs, target.outputs)
    else:
        req = await state.limits.decode_elsewhere("v2", body, length, target.inputs, target.outputs)
    outputs, _latency_ms = await state.run_engine(req.feeds, target.name)
    content, header_length = oip.encode_response(target.name, req, outputs)
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
        target = served_model(state, *_path_model(request))
    except RequestError as exc:
        return refusal(exc).response()
    service = state.service
    status, _body = service.readiness()
    if len(service.models) > 1:  # one model of several: its own engine, and what every request shares
        shared_ok = not service.draining and not service.failed and not service.unhealthy
        ok = service.target_ready(target) and shared_ok and service.thermal.state != "critical"
        status = 200 if ok else 503
    return JSONResponse({"name": request.path_params["name"], "ready": status == 200}, status_code=status)


async def metadata(state: AppState, request: Request) -> Response:
    try:
        target = served_model(state, *_path_model(request))
    except RequestError as exc:
        return refusal(exc).response()
    backend = state.service.backend
    platform = "pipeline" if isinstance(target, ServedPipeline) else backend.name if backend else ""
    return JSONResponse(
        {
            "name": target.name,
            "versions": [oip.MODEL_VERSION],
            "platform": platform,
            "inputs": [oip.tensor_metadata(s) for s in target.inputs],
            "outputs": [oip.tensor_metadata(s) for s in target.outputs],
        }
    )
