"""``POST /v1/infer`` (the default model), ``/v1/models/{name}/infer`` and ``/v1/pipelines/{name}/infer``:
JSON (``{"inputs": {...}}``) or npz in, JSON or npz out; ``GET /v1/models`` lists what is served."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from edge_runtime.errors import RequestError
from edge_runtime.service.decoding import NPZ, decode_json, decode_npz, encode_npz
from edge_runtime.service.infer import AppState
from edge_runtime.service.limits import INLINE_DECODE_BYTES
from edge_runtime.service.replies import Reply, json_reply


async def infer(state: AppState, headers: dict[bytes, bytes], receive: Any, params: dict[str, Any]) -> Reply:
    """Small bodies decode on the event loop; large npz on a worker thread, large JSON in the decoder process."""
    name = params.get("name")
    target = state.target(name)  # unknown names are 404 before the body is read
    body = await state.limits.read_body(headers, receive)
    ctype = headers.get(b"content-type", b"application/json").decode("latin-1")
    ctype = ctype.split(";")[0].strip().lower()
    if ctype == NPZ:
        args = (body, target.inputs, target.batch)
        if len(body) <= INLINE_DECODE_BYTES:
            feeds = decode_npz(*args)
        else:  # zlib lets go of the GIL while it inflates
            feeds = await run_in_threadpool(decode_npz, *args)
    elif ctype in ("application/json", "text/json", ""):
        specs = target.inputs
        if len(body) <= INLINE_DECODE_BYTES:
            feeds = decode_json(body, specs)
        else:
            feeds = await state.limits.decode_elsewhere("v1", body, specs)
    else:
        raise RequestError(
            415,
            "media_type",
            f"Content-Type {ctype} is not supported; send application/json or {NPZ}.",
        )
    outputs, latency_ms = await state.run_engine(feeds, name)
    if NPZ.encode() in headers.get(b"accept", b""):
        return Reply(200, encode_npz(outputs), NPZ, [(b"x-latency-ms", f"{latency_ms:.3f}".encode())])
    for name, arr in outputs.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise RequestError(
                422,
                "non_finite_output",
                f"Output {name!r} has values that are not finite (NaN or Infinity), which JSON cannot "
                f"carry; ask for npz (Accept: {NPZ}) to get them.",
            )
    return json_reply({"outputs": {k: v.tolist() for k, v in outputs.items()}, "latency_ms": latency_ms})


async def pipeline_infer(
    state: AppState, headers: dict[bytes, bytes], receive: Any, params: dict[str, Any]
) -> Reply:
    """``/v1/pipelines/{name}/infer``: pipeline names only (models and pipelines share one namespace, so
    ``/v1/models/{name}/infer`` runs a pipeline too, as the Open Inference Protocol routes do)."""
    if params["name"] not in state.service.pipelines:
        served = ", ".join(state.service.pipelines) or "none"
        raise RequestError(
            404,
            "unknown_model",
            f"Pipeline {params['name']!r} is not served here; the pipelines are: {served}.",
        )
    return await infer(state, headers, receive, params)


async def models(state: AppState, request: Any) -> Any:
    """``GET /v1/models``: every model (name, ready, backend, version, slots, tensors) and pipeline."""
    from starlette.responses import JSONResponse

    service = state.service
    backend = service.backend.name if service.backend is not None else ""
    return JSONResponse(
        {
            "models": [m.describe(backend) for m in service.models.values()],
            "pipelines": [
                p.pipeline.to_dict() | {"ready": service.target_ready(p)} for p in service.pipelines.values()
            ],
        }
    )
