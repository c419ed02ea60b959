"""What one request may cost: the body size limit, and the bounded queue in front of the decoder process."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool

from edge_runtime.errors import RequestError
from edge_runtime.service.decoder import DecoderProcess

# Bodies up to this size decode on the event loop (a few ms at most); larger JSON goes to the decoder
# process and larger npz to a worker thread, so /healthz and other requests never wait behind a parse.
INLINE_DECODE_BYTES = 64 << 10
DECODER_QUEUE = 4  # large JSON bodies decoding or waiting for the decoder process at once; more get 429


class RequestLimits:
    """Refuses a body past ``max_body_bytes`` as it arrives (413), and large JSON beyond the decoder's
    queue (429): one decoder process, one body at a time, a few more waiting (each holds its body)."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._too_large = f"The request body is larger than the {max_body_bytes} byte limit."
        self.decoder = DecoderProcess()
        self._decoder_turn = asyncio.Lock()
        self._decoder_queue = 0

    async def read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        """The whole body from ASGI ``receive``, refused (413) as soon as it passes the limit."""
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, "too_large", self._too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "disconnected", "The client went away before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "too_large", self._too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def decode_elsewhere(self, kind: str, *args: Any) -> Any:
        """``decoder.call(kind, *args)`` off the event loop, in turn; 429 when the queue is full."""
        if self._decoder_queue >= DECODER_QUEUE:
            raise RequestError(
                429,
                "decoder_busy",
                "Other large JSON bodies are being decoded; retry shortly, or send binary tensors.",
            )
        self._decoder_queue += 1
        try:
            async with self._decoder_turn:
                return await run_in_threadpool(self.decoder.call, kind, *args)
        finally:
            self._decoder_queue -= 1

    def close(self) -> None:
        self.decoder.close()
