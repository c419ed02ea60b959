"""Liveness, readiness and Prometheus metrics over HTTP: what Docker, the fleet's gate and scrapers read."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge_runtime.service.infer import AppState


async def healthz(state: AppState, request: Request) -> Response:
    status, body = state.service.health()
    return JSONResponse(body, status_code=status)


async def readyz(state: AppState, request: Request) -> Response:
    status, body = state.service.readiness()
    return JSONResponse(body, status_code=status)


async def metrics(state: AppState, request: Request) -> Response:
    return Response(generate_latest(state.service.registry), media_type=CONTENT_TYPE_LATEST)
