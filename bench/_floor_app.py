"""A no-op ASGI app (reads the body, answers 300 bytes): the HTTP floor under the service_overhead numbers."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-npz")]}
    )
    await send({"type": "http.response.body", "body": b"x" * 300})
