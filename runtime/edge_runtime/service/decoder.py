"""The decoder process: large JSON bodies are parsed in a child process, so the service's event loop and
its /healthz never wait behind a parse that holds the GIL for seconds."""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import oip
from edge_runtime.bundle import TensorSpec
from edge_runtime.errors import RequestError
from edge_runtime.service.decoding import decode_json, read_exactly

_FRAME = struct.Struct("<Q")


def _decode_v1(body: bytes, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    return decode_json(body, specs)


def _decode_v2(body: bytes, length: int | None, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Any:
    return oip.decode_request(body, length, inputs, outputs)


_DECODERS: dict[str, Callable[..., Any]] = {"v1": _decode_v1, "v2": _decode_v2}


class DecoderProcess:
    """A child Python process that decodes large JSON bodies for the HTTP service.

    CPython's json parser and numpy's list conversion hold the GIL for the whole call (61 MB of floats:
    2.6 s; 45 MB of empty lists: 15 s, measured on a 2-core machine), so a thread stalls /healthz as the
    event loop would; another process does not. Started on first use, one body at a time, with garbage
    collection off (parsed JSON has no cycles; collections were 13 of those 15 s) and first in line for the
    kernel's OOM killer: a body that exhausts memory kills the decoder, not the service, the request gets
    a 413 and the next large body starts a new decoder.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def call(self, kind: str, *args: Any) -> Any:
        """``_DECODERS[kind](*args)`` in the child (blocking: run it off the event loop)."""
        payload = pickle.dumps((kind, args), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            proc = self._running()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(_FRAME.pack(len(payload)))
                proc.stdin.write(payload)
                proc.stdin.flush()
                del payload
                (size,) = _FRAME.unpack(read_exactly(proc.stdout, _FRAME.size))
                reply = pickle.loads(read_exactly(proc.stdout, size))
            except (OSError, EOFError, ValueError, struct.error, pickle.UnpicklingError):
                self._end(proc)
                raise RequestError(
                    413,
                    "decoder_stopped",
                    "The JSON decoder process stopped while decoding this body (out of memory?); send a "
                    "smaller body, or binary tensors (npz or the v2 binary extension).",
                ) from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "refused":
            raise RequestError(reply[1], reply[2], reply[3])
        raise RuntimeError(f"the JSON decoder process failed: {reply[1]}")

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from edge_runtime.service.decoder import decoder_main; decoder_main()",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        return self._proc

    def _end(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        """End the child (it also ends by itself when the service's end of the pipe closes)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._end(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def decoder_main() -> None:
    """The decoder process: framed pickles of (kind, args) on stdin, framed pickled replies on stdout."""
    import gc
    import traceback

    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    gc.disable()
    requests, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to the service's log, not into the replies
    while True:
        head = requests.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return  # the service closed the pipe or exited
        kind, args = pickle.loads(read_exactly(requests, _FRAME.unpack(head)[0]))
        reply: tuple[Any, ...]
        try:
            reply = ("ok", _DECODERS[kind](*args))
        except RequestError as exc:
            reply = ("refused", exc.status, exc.reason, str(exc))
        except Exception as exc:
            traceback.print_exc()
            reply = ("failed", type(exc).__name__)
        del args
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        del reply
        replies.write(_FRAME.pack(len(data)))
        replies.write(data)
        replies.flush()
        del data
        gc.collect()
