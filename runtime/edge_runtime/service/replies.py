"""Answers of the infer routes as plain ASGI messages: no Response object on the hot path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import RequestError


@dataclass(slots=True)
class Reply:
    """An HTTP answer of the infer routes, sent as two ASGI messages without a Response object."""

    status: int
    body: bytes
    media_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def headers_text(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]

    def response(self) -> Any:
        """The same answer as a Starlette Response, for routes that answer with one."""
        from starlette.responses import Response

        return Response(self.body, self.status, dict(self.headers_text()), self.media_type)


def json_reply(doc: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    """JSON as Starlette's JSONResponse writes it (compact, UTF-8, no NaN)."""
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Reply(status, body, "application/json", headers or [])


def refusal(exc: RequestError) -> Reply:
    """``{"error": sentence}`` with the refusal's status; 429/503 say when to retry."""
    headers = [(b"retry-after", b"1")] if exc.status in (429, 503) else []
    return json_reply({"error": str(exc)}, exc.status, headers)


async def send_reply(send: Any, reply: Reply) -> None:
    content_type = reply.media_type.encode() + (
        b"; charset=utf-8" if reply.media_type.startswith("text/") else b""
    )
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-length", str(len(reply.body)).encode()),
                (b"content-type", content_type),
                *reply.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})
