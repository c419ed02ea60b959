"""The inference service: one engine behind a small HTTP API (Starlette on uvicorn).

Start-up: probe → engine cache get-or-build (progress lines while a long build runs) → warm-up → ready.
The HTTP server answers /healthz from the first second, so Docker sees a live process while TensorRT
builds; /readyz turns 200 once the engine is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import oip
from edge_runtime.backends import Backend, BackendChoice, BuildOptions, Engine, check_feeds, select_backend
from edge_runtime.bundle import BatchProfile, ModelBundle, TensorSpec
from edge_runtime.cache import CachedEngine, EngineCache
from edge_runtime.device import DeviceProbe, probe
from edge_runtime.errors import EdgeError, InputError, RequestError
from edge_runtime.oip import ProtocolError
from edge_runtime.thermal import STATE_CODES, ThermalGovernor, ThermalPolicy

log = logging.getLogger(__name__)

NPZ = "application/x-npz"
MIB = 1 << 20
REASON_LABEL_CHARS = 300  # the fallback sentence as a metric label: bounded, a label is not a log
# Exit status when the watchdog gives up on a hung inference (EX_TEMPFAIL in sysexits.h: "try again later").
# A stuck engine call cannot be interrupted, so the process leaves and the container's restart policy
# (compose: restart: unless-stopped) starts it again; docs/runtime.md has the measured times.
EXIT_HUNG = 75


@dataclass
class ServiceConfig:
    """Everything ``edge-runtime serve`` takes; the CLI fills it from flags and EDGE_* variables."""

    bundle: Path
    cache: Path
    backend: str = "auto"
    precision: str | None = None  # default: the bundle's precision
    max_body_bytes: int = 64 * MIB
    warmup_runs: int = 5
    deadline_ms: float = 2000.0  # watchdog: an inference slower than this marks the service unhealthy
    hung_exit_s: float = 10.0  # and one still running this much longer ends the process (0: never)
    thermal: ThermalPolicy = field(default_factory=ThermalPolicy)
    device_root: Path = Path("/")  # where /etc, /proc and /sys are read from (tests: a fixture tree)
    thermal_poll_s: float = 1.0
    cache_keep: int = 3
    intra_op_threads: int = 0
    spin_wait: bool = False
    cuda_graph: bool = False
    # Run inference on the event-loop thread: ~0.1–0.3 ms less per request (bench/service_overhead), but
    # /healthz and /metrics wait while an inference runs (a hung one makes them time out instead of 503).
    inline_infer: bool = False
    on_thermal_change: Callable[[str, str], None] | None = None


class ServiceMetrics:
    """Prometheus metrics in the service's own registry (the ROS 2 bridge adds its own to it)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Enum, Gauge, Histogram

        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.latency = Histogram(
            "edge_request_latency_seconds",
            "POST /v1/infer and /v2 infer latency, request to response",
            registry=registry,
            buckets=buckets,
        )
        self.infer_latency = Histogram(
            "edge_inference_latency_seconds",
            "Engine time of one inference",
            registry=registry,
            buckets=buckets,
        )
        self.requests = Counter(
            "edge_requests_total", "Inference requests by HTTP status", ["code"], registry=registry
        )
        self.errors = Counter(
            "edge_request_errors_total",
            "Rejected or failed inference requests by reason",
            ["reason"],
            registry=registry,
        )
        self.cache = Counter(
            "edge_engine_cache_total", "Engine cache lookups at start-up", ["result"], registry=registry
        )
        self.build_seconds = Gauge(
            "edge_engine_build_seconds",
            "Seconds the last engine build took (0: cache hit)",
            registry=registry,
        )
        self.ready = Gauge("edge_ready", "1 when the engine is loaded and warmed up", registry=registry)
        self.healthy = Gauge(
            "edge_healthy", "0 once the watchdog saw an inference overrun its deadline", registry=registry
        )
        self.temperature = Gauge(
            "edge_temperature_celsius", "Hottest watched thermal zone", registry=registry
        )
        self.thermal_state = Enum(
            "edge_thermal_state", "Thermal governor state", states=list(STATE_CODES), registry=registry
        )
        self.watchdog_trips = Counter(
            "edge_watchdog_trips_total", "Inferences that overran their deadline", registry=registry
        )
        # One series, set once the backend is chosen: a dashboard or alert finds robots serving ONNX Runtime
        # on the CPU because TensorRT was not usable (fallback="true"), with TensorRT's own sentence.
        self.backend = Gauge(
            "edge_backend_info",
            "The backend serving (1), what was asked for, and whether auto fell back from TensorRT and why",
            ["backend", "requested", "fallback", "reason"],
            registry=registry,
        )


class InferenceService:
    """Owns the engine, the watchdog and the thermal governor; the HTTP app is a thin layer on top."""

    def __init__(
        self, config: ServiceConfig, registry: Any = None, say: Callable[[str], None] | None = None
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        self.say = say or (lambda msg: log.info("%s", msg))
        self.thermal = ThermalGovernor(
            config.thermal, root=config.device_root, on_change=self._thermal_changed
        )
        self.bundle: ModelBundle | None = None
        self.backend: Backend | None = None
        self.backend_choice: BackendChoice | None = None
        self.cache = EngineCache(config.cache, keep=config.cache_keep)
        self.device: DeviceProbe | None = None
        self.cached: CachedEngine | None = None
        self.engine: Engine | None = None
        self.ready = False
        self.draining = False
        self.failed: str | None = None
        self.unhealthy: str | None = None
        # Called once when an inference has overrun its deadline by ``hung_exit_s``; serve() exits there.
        self.on_hung: Callable[[str], None] | None = None
        self._hung_called = False
        self.startup: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._engine_lock = threading.Lock()
        self._inflight: dict[int, float] = {}
        self._inflight_lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics.healthy.set(1)
        self.metrics.thermal_state.state("normal")

    # -- start-up ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Fast checks that must fail at start with one sentence: bundle, backend, writable cache."""
        self.device = probe(self.config.device_root)
        self.say(
            f"device: {self._board()}, L4T {self.device.identity.l4t or '-'}, GPU {self.device.identity.gpu}"
            + ("" if self.device.gpu_visible in (None, True) else " (CUDA sees no GPU)")
        )
        self.bundle = ModelBundle.load(self.config.bundle)
        choice = self.backend_choice = select_backend(self.config.backend)
        self.backend = choice.backend
        self.say(f"backend: {self.backend.name} {self.backend.version()} (asked for {self.config.backend})")
        fallback = choice.fallback
        self.metrics.backend.labels(
            choice.backend.name,
            choice.requested,
            "true" if fallback else "false",
            (fallback or "")[:REASON_LABEL_CHARS],
        ).set(1)
        if fallback:
            log.warning(
                "backend auto fell back to %s on the CPU, TensorRT is not used: %s",
                self.backend.name,
                fallback,
            )
        self.cache.prepare()

    def _board(self) -> str:
        """The board's name; an L4T release without a device tree (a container that cannot see /proc's) is
        still a Jetson userspace, not 'not a Jetson'."""
        assert self.device is not None
        if self.device.identity.board:
            return self.device.identity.board
        return "Jetson (board not visible)" if self.device.is_jetson else "not a Jetson"

    def options(self) -> BuildOptions:
        assert self.bundle is not None
        return BuildOptions.for_bundle(
            self.bundle,
            self.device.model if self.device is not None else None,
            self.config.precision,
            intra_op_threads=self.config.intra_op_threads,
            spin_wait=self.config.spin_wait,
            cuda_graph=self.config.cuda_graph,
        )

    def load(self) -> None:
        """Cache get-or-build, then warm-up; sets ready. Raises EdgeError on failure."""
        if self.bundle is None:
            self.prepare()
        assert self.bundle is not None and self.backend is not None and self.device is not None
        t0 = time.monotonic()
        cached = self.cache.open(
            self.backend, self.bundle, self.options(), self.device.identity, progress=self.say
        )
        self.metrics.cache.labels("hit" if cached.hit else "miss").inc()
        self.metrics.build_seconds.set(cached.build_seconds)
        self.say(
            f"engine cache {'hit' if cached.hit else 'miss'}: key {cached.key.digest[:12]} "
            f"(build {cached.build_seconds:.2f} s, load {cached.load_seconds:.3f} s)"
        )
        self.cached, self.engine = cached, cached.engine
        feeds = self.example_feeds(self.bundle.manifest.batch.opt)
        tw = time.monotonic()
        for _ in range(max(self.config.warmup_runs, 0)):
            self.engine.infer(feeds)
        warm_s = time.monotonic() - tw
        self.startup = {
            "cache_hit": cached.hit,
            "key": cached.key.digest,
            "build_seconds": cached.build_seconds,
            "load_seconds": cached.load_seconds,
            "warmup_seconds": warm_s,
            "engine_seconds": time.monotonic() - t0,
            "time_to_ready_s": time.monotonic() - self._t0,
            "backend": self.backend.name,
        }
        self.ready = True
        self.metrics.ready.set(1)
        self.say(
            f"ready in {self.startup['time_to_ready_s']:.2f} s "
            f"({'cache hit' if cached.hit else 'built engine'}, {self.config.warmup_runs} warm-up runs)"
        )

    def example_feeds(self, batch: int) -> dict[str, np.ndarray]:
        assert self.bundle is not None
        return {s.name: np.zeros(s.concrete_shape(batch), dtype=s.dtype) for s in self.bundle.inputs}

    # -- inference -----------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked, watched inference: used by HTTP and by the ROS 2 bridge."""
        if not self.ready or self.engine is None or self.bundle is None:
            raise RequestError(503, "not_ready", "The engine is not loaded yet; retry when /readyz is 200.")
        if self.draining:
            raise RequestError(503, "draining", "The service is shutting down.")
        hung = self.unhealthy
        if hung:  # the engine is stuck behind its lock: queueing more work behind it helps nobody
            raise RequestError(
                503,
                "hung",
                f"{hung} New work is refused until it finishes; the service restarts if it does not.",
            )
        refusal = self.thermal.admit()
        if refusal:
            status = 503 if self.thermal.state == "critical" else 429
            raise RequestError(status, "thermal", refusal)
        try:
            batch = check_feeds(self.bundle.inputs, feeds, self.bundle.manifest.batch)
        except InputError as exc:
            raise RequestError(400, "bad_input", str(exc)) from None
        cap = self.thermal.max_batch()
        with self._watch():
            t0 = time.perf_counter()
            if cap is not None and batch > cap:
                parts = [
                    self._run({k: v[i : i + cap] for k, v in feeds.items()}) for i in range(0, batch, cap)
                ]
                out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            else:
                out = self._run(feeds)
            self.metrics.infer_latency.observe(time.perf_counter() - t0)
        return out

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.engine is not None
        with self._engine_lock:  # one execution context: calls are serialized
            return self.engine.infer(feeds)

    @contextlib.contextmanager
    def _watch(self) -> Any:
        with self._inflight_lock:
            self._seq += 1
            token = self._seq
            self._inflight[token] = time.monotonic()
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight.pop(token, None)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- background loops ----------------------------------------------------------------------------
    def start_background(self) -> None:
        for name, target in (("watchdog", self._watchdog_loop), ("thermal", self._thermal_loop)):
            t = threading.Thread(target=target, name=f"edge-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def check_watchdog(self) -> None:
        """Trip while the oldest inference is past its deadline (/healthz and /readyz 503, new work 503),
        clear once none is, and call ``on_hung`` once one has overrun by ``hung_exit_s``: a hung engine
        does not come back by itself, and Docker restarts an exited container, never an unhealthy one."""
        deadline = self.config.deadline_ms / 1000.0
        if deadline <= 0:
            return
        now = time.monotonic()
        with self._inflight_lock:
            oldest = min(self._inflight.values(), default=None)
        running = 0.0 if oldest is None else now - oldest
        if running <= deadline:
            if self.unhealthy:
                log.warning("watchdog: the inference that overran its deadline finished; healthy again")
                self.unhealthy = None
                self._hung_called = False
                self.metrics.healthy.set(1)
            return
        tripped = self.unhealthy is None
        self.unhealthy = (
            f"An inference has been running for {running:.1f} s, over its {deadline:.1f} s deadline."
        )
        if tripped:
            self.metrics.healthy.set(0)
            self.metrics.watchdog_trips.inc()
            log.error("watchdog: %s", self.unhealthy)
        grace = self.config.hung_exit_s
        if grace > 0 and running > deadline + grace and not self._hung_called:
            self._hung_called = True
            message = (
                f"An inference has hung for {running:.1f} s ({deadline:.1f} s deadline + {grace:.1f} s grace); "
                f"the engine is stuck, so the service exits with status {EXIT_HUNG} for its restart policy."
            )
            log.critical("watchdog: %s", message)
            if self.on_hung is not None:
                self.on_hung(message)

    def _watchdog_loop(self) -> None:
        period = max(min(self.config.deadline_ms / 4000.0, 1.0), 0.01)
        while not self._stop.wait(period):
            self.check_watchdog()

    def poll_thermal(self) -> None:
        state = self.thermal.update()
        self.metrics.thermal_state.state(state)
        if self.thermal.temp_c is not None:
            self.metrics.temperature.set(self.thermal.temp_c)

    def _thermal_loop(self) -> None:
        while True:
            try:
                self.poll_thermal()
            except Exception:
                log.exception("thermal poll failed")
            if self._stop.wait(self.config.thermal_poll_s):
                return

    def _thermal_changed(self, old: str, new: str) -> None:
        if self.config.on_thermal_change is not None:
            self.config.on_thermal_change(old, new)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        if self.engine is not None:
            with self._engine_lock:
                self.engine.close()
            self.engine = None
        self.ready = False
        self.metrics.ready.set(0)

    # -- status --------------------------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        """Alive unless the watchdog tripped or start-up failed; the thermal state is shown, not fatal."""
        body: dict[str, Any] = {
            "status": "ok",
            "ready": self.ready,
            "thermal": self.thermal.snapshot(),
            "inflight": self.inflight,
        }
        if self.failed or self.unhealthy:
            body.update(status="unhealthy", reason=self.failed or self.unhealthy)
            return 503, body
        return 200, body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"ready": self.ready, "draining": self.draining, "thermal": self.thermal.state}
        if self.bundle is not None:  # the name under /v2/models/ (the fleet's health gate reads it)
            body["model"] = self.bundle.manifest.name
        if self.backend_choice is not None:  # the fleet's gate refuses a silent CPU fallback from these
            body["backend"] = self.backend_choice.backend.name
            body["backend_requested"] = self.backend_choice.requested
            if self.backend_choice.fallback:
                body["fallback"] = self.backend_choice.fallback
        elif self.backend is not None:
            body["backend"] = self.backend.name
        if self.startup:
            body["startup"] = self.startup
        ok = self.ready and not self.draining and not self.failed and self.thermal.state != "critical"
        hung = self.unhealthy
        if hung:  # Docker's health check reads /readyz: a stuck engine must fail it too
            ok = False
            body["reason"] = hung
        return (200 if ok else 503), body


# -- request decoding --------------------------------------------------------------------------------------
# Bodies up to this size decode on the event loop (a few ms at most); larger JSON goes to the decoder
# process and larger npz to a worker thread, so /healthz and other requests never wait behind a parse.
INLINE_DECODE_BYTES = 64 << 10
NPY_HEADER_MAX = 10_000  # numpy's own limit on an .npy header's length (np.lib.format)
NPZ_READ_CHUNK = 1 << 20  # inflate at most this much per read: a member's stream is never trusted
DECODER_QUEUE = 4  # large JSON bodies decoding or waiting for the decoder process at once; more get 429


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
        head = _read_exactly(f, 10)  # magic, version, and a 2-byte header length (4 bytes from version 2)
        if head[:6] != b"\x93NUMPY" or head[6] not in (1, 2, 3):
            raise RequestError(400, "bad_npz", f"{where} is not an .npy array.")
        if head[6] > 1:
            head += _read_exactly(f, 2)
        length = int.from_bytes(head[8:], "little")
        if length > NPY_HEADER_MAX:
            raise RequestError(400, "bad_npz", f"{where} has a {length}-byte .npy header.")
        raw = io.BytesIO(head + _read_exactly(f, length))
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


def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return bytes(data)


def _inflate(zf: zipfile.ZipFile, m: _NpyMember) -> np.ndarray:
    """The member's data, read in ``NPZ_READ_CHUNK`` pieces into an array of exactly its header's size."""
    out = np.empty(math.prod(m.shape), dtype=m.dtype)
    raw = out.view(np.uint8)
    with zf.open(m.info) as f:
        _read_exactly(f, m.header_bytes)
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


# -- the JSON decoder process --------------------------------------------------------------------------------
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
                (size,) = _FRAME.unpack(_read_exactly(proc.stdout, _FRAME.size))
                reply = pickle.loads(_read_exactly(proc.stdout, size))
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
                [sys.executable, "-c", "from edge_runtime.service import decoder_main; decoder_main()"],
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
        kind, args = pickle.loads(_read_exactly(requests, _FRAME.unpack(head)[0]))
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


def encode_npz(outputs: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **outputs)  # type: ignore[arg-type]
    return buf.getvalue()


# -- HTTP app ----------------------------------------------------------------------------------------------
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


@dataclass(slots=True)
class Reply:
    """An HTTP answer of the infer routes, sent as two ASGI messages without a Response object."""

    status: int
    body: bytes
    media_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def headers_text(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]


def json_reply(doc: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    """JSON as Starlette's JSONResponse writes it (compact, UTF-8, no NaN)."""
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Reply(status, body, "application/json", headers or [])


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


def create_app(
    service: InferenceService,
    load_in_background: bool = True,
    on_failure: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Any:
    """The Starlette app; its lifespan starts the engine load and the watchdog/thermal loops."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    metrics = service.metrics

    limit = service.config.max_body_bytes
    too_large = f"The request body is larger than the {limit} byte limit."

    async def read_body(headers: dict[bytes, bytes], receive: Any) -> bytes:
        """The whole body from ASGI ``receive``, refused (413) as soon as it passes the limit."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, "too_large", too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "disconnected", "The client went away before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "too_large", too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # Label children bound once: a labels() lookup per request is measurable at this scale.
    ok_count, fail_count, engine_errors = (
        metrics.requests.labels("200"),
        metrics.requests.labels("500"),
        metrics.errors.labels("engine"),
    )

    def refusal(exc: RequestError) -> Reply:
        """``{"error": sentence}`` with the refusal's status; 429/503 say when to retry."""
        headers = [(b"retry-after", b"1")] if exc.status in (429, 503) else []
        return json_reply({"error": str(exc)}, exc.status, headers)

    async def guarded(handle: Callable[[], Awaitable[Reply]]) -> Reply:
        """Status codes, metrics and error bodies shared by /v1 and /v2 infer (``{"error": sentence}``)."""
        t0 = time.perf_counter()
        try:
            reply = await handle()
        except RequestError as exc:
            metrics.requests.labels(str(exc.status)).inc()
            metrics.errors.labels(exc.reason).inc()
            return refusal(exc)
        except EdgeError as exc:
            fail_count.inc()
            engine_errors.inc()
            return json_reply({"error": str(exc)}, 500)
        except Exception as exc:  # a backend failure must not take the service down or leak a traceback
            log.exception("inference failed")
            fail_count.inc()
            engine_errors.inc()
            return json_reply(
                {"error": f"Inference failed ({type(exc).__name__}); see the service log."}, 500
            )
        ok_count.inc()
        metrics.latency.observe(time.perf_counter() - t0)
        return reply

    async def run_engine(feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """``service.infer`` inline or on the thread pool; returns the outputs and the engine time in ms."""
        t_inf = time.perf_counter()
        if service.config.inline_infer:
            outputs = service.infer(feeds)
        else:
            outputs = await run_in_threadpool(service.infer, feeds)
        return outputs, (time.perf_counter() - t_inf) * 1000.0

    def loaded_bundle() -> ModelBundle:
        if service.bundle is None:
            raise RequestError(503, "not_ready", "The engine is not loaded yet; retry when /readyz is 200.")
        return service.bundle

    # Large JSON bodies go to one decoder process, one at a time; a few more may wait their turn (each
    # holds its body), further ones are refused until the queue shortens.
    decoder = DecoderProcess()
    decoder_turn = asyncio.Lock()
    decoder_queue = [0]

    async def decode_elsewhere(kind: str, *args: Any) -> Any:
        if decoder_queue[0] >= DECODER_QUEUE:
            raise RequestError(
                429,
                "decoder_busy",
                "Other large JSON bodies are being decoded; retry shortly, or send binary tensors.",
            )
        decoder_queue[0] += 1
        try:
            async with decoder_turn:
                return await run_in_threadpool(decoder.call, kind, *args)
        finally:
            decoder_queue[0] -= 1

    async def v1_infer(headers: dict[bytes, bytes], receive: Any) -> Reply:
        body = await read_body(headers, receive)
        ctype = headers.get(b"content-type", b"application/json").decode("latin-1")
        ctype = ctype.split(";")[0].strip().lower()
        if ctype == NPZ:
            bundle = loaded_bundle()
            args = (body, bundle.inputs, bundle.manifest.batch)
            if len(body) <= INLINE_DECODE_BYTES:
                feeds = decode_npz(*args)
            else:  # zlib lets go of the GIL while it inflates
                feeds = await run_in_threadpool(decode_npz, *args)
        elif ctype in ("application/json", "text/json", ""):
            specs = loaded_bundle().inputs
            if len(body) <= INLINE_DECODE_BYTES:
                feeds = decode_json(body, specs)
            else:
                feeds = await decode_elsewhere("v1", body, specs)
        else:
            raise RequestError(
                415,
                "media_type",
                f"Content-Type {ctype} is not supported; send application/json or {NPZ}.",
            )
        outputs, latency_ms = await run_engine(feeds)
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

    # -- Open Inference Protocol (KServe v2 / Triton HTTP) ---------------------------------------------
    def v2_model(name: str, version: str | None) -> ModelBundle:
        """The bundle the path names (its model name, version "1" if given); 404 for any other."""
        bundle = loaded_bundle()
        if name != bundle.manifest.name or (version is not None and version != oip.MODEL_VERSION):
            shown = name if version is None else f"{name} version {version}"
            raise ProtocolError(
                f"Model {shown!r} is not served here; this service serves {bundle.manifest.name!r} "
                f"version {oip.MODEL_VERSION}.",
                status=404,
                reason="unknown_model",
            )
        return bundle

    async def v2_infer(headers: dict[bytes, bytes], receive: Any, name: str, version: str | None) -> Reply:
        bundle = v2_model(name, version)
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding != "identity":
            raise ProtocolError(
                f"Content-Encoding {encoding} is not supported; send the request uncompressed.",
                status=415,
                reason="media_type",
            )
        body = await read_body(headers, receive)
        declared = headers.get(oip.HEADER_LENGTH.encode())
        length = oip.parse_header_length(None if declared is None else declared.decode("latin-1"), len(body))
        if (len(body) if length is None else length) <= INLINE_DECODE_BYTES:  # binary tensors cost ~µs
            req = oip.decode_request(body, length, bundle.inputs, bundle.outputs)
        else:
            req = await decode_elsewhere("v2", body, length, bundle.inputs, bundle.outputs)
        outputs, _latency_ms = await run_engine(req.feeds)
        content, header_length = oip.encode_response(bundle.manifest.name, req, outputs)
        if header_length is None:
            return Reply(200, content, "application/json")
        return Reply(
            200,
            content,
            "application/octet-stream",
            [(oip.HEADER_LENGTH.encode(), str(header_length).encode())],
        )

    def as_response(reply: Reply) -> Response:
        return Response(reply.body, reply.status, dict(reply.headers_text()), reply.media_type)

    def path_model(request: Request) -> tuple[str, str | None]:
        return request.path_params["name"], request.path_params.get("version")

    async def v2_server(request: Request) -> Response:
        from edge_runtime import __version__

        return JSONResponse({"name": "edge-runtime", "version": __version__, "extensions": oip.EXTENSIONS})

    async def v2_live(request: Request) -> Response:
        status, _body = service.health()
        return JSONResponse({"live": status == 200}, status_code=status)

    async def v2_ready(request: Request) -> Response:
        status, _body = service.readiness()
        return JSONResponse({"ready": status == 200}, status_code=status)

    async def v2_model_ready(request: Request) -> Response:
        try:
            v2_model(*path_model(request))
        except RequestError as exc:
            return as_response(refusal(exc))
        status, _body = service.readiness()
        return JSONResponse({"name": request.path_params["name"], "ready": status == 200}, status_code=status)

    async def v2_metadata(request: Request) -> Response:
        try:
            bundle = v2_model(*path_model(request))
        except RequestError as exc:
            return as_response(refusal(exc))
        return JSONResponse(
            {
                "name": bundle.manifest.name,
                "versions": [oip.MODEL_VERSION],
                "platform": service.backend.name if service.backend is not None else "",
                "inputs": [oip.tensor_metadata(s) for s in bundle.inputs],
                "outputs": [oip.tensor_metadata(s) for s in bundle.outputs],
            }
        )

    async def healthz(request: Request) -> Response:
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    async def readyz(request: Request) -> Response:
        status, body = service.readiness()
        return JSONResponse(body, status_code=status)

    async def prom(request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        service.start_background()
        loader = None
        if load_in_background and not service.ready:

            def load() -> None:
                try:
                    service.load()
                except Exception as exc:  # shown as one sentence, and the process exits non-zero
                    service.failed = str(exc) if isinstance(exc, EdgeError) else f"Start-up failed: {exc!r}."
                    log.error("start-up failed: %s", service.failed)
                    if on_failure is not None:
                        on_failure(service.failed)

            loader = threading.Thread(target=load, name="edge-load", daemon=True)
            loader.start()
        try:
            yield
        finally:
            service.draining = True
            if on_shutdown is not None:
                await asyncio.to_thread(on_shutdown)  # e.g. stop the ROS 2 bridge before the engine closes
            # uvicorn has already waited for in-flight requests; close what the service owns.
            await asyncio.to_thread(decoder.close)
            await asyncio.to_thread(service.close)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prom, methods=["GET"]),
        Route("/v2", v2_server, methods=["GET"]),
        Route("/v2/health/live", v2_live, methods=["GET"]),
        Route("/v2/health/ready", v2_ready, methods=["GET"]),
        Route("/v2/models/{name}", v2_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", v2_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", v2_model_ready, methods=["GET"]),
    ]
    rest = Starlette(routes=routes, lifespan=lifespan)
    method_not_allowed = Reply(405, b"Method Not Allowed", "text/plain", [(b"allow", b"POST")])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The infer routes as plain ASGI (no Request/Response objects, no router: 0.044 ms less p50 per
        call in an A/B on our 2-core machine, docs/runtime.md); everything else, and the lifespan, goes to
        Starlette."""
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/v1/infer":
                handle: Callable[[dict[bytes, bytes], Any], Awaitable[Reply]] | None = v1_infer
            else:
                match = _V2_INFER.fullmatch(path) if path.startswith("/v2/models/") else None
                handle = (
                    None if match is None else functools.partial(v2_infer, name=match[1], version=match[2])
                )
            if handle is not None:
                if scope["method"] != "POST":
                    return await send_reply(send, method_not_allowed)
                headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
                return await send_reply(send, await guarded(lambda: handle(headers, receive)))
        await rest(scope, receive, send)

    return app


def serve(
    service: InferenceService,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; uvicorn stops accepting, then drains in-flight requests."""
    import uvicorn

    server: uvicorn.Server | None = None

    def fail(msg: str) -> None:
        if server is not None:
            server.should_exit = True

    def exit_hung(msg: str) -> None:
        """A stuck engine call can be neither interrupted nor drained (closing the engine would wait for
        it): say why, and leave at once so the restart policy starts a fresh process."""
        service.say(f"watchdog: {msg}")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_HUNG)

    if service.on_hung is None:
        service.on_hung = exit_hung
    app = create_app(service, on_failure=fail, on_shutdown=on_stop)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(drain_timeout_s),
        loop="asyncio",
        http="auto",
    )
    server = uvicorn.Server(config)

    if on_ready is not None:

        def wait_ready() -> None:
            while not service.ready and not service.failed and not service._stop.is_set():
                time.sleep(0.05)
            if service.ready:
                on_ready()

        threading.Thread(target=wait_ready, name="edge-on-ready", daemon=True).start()
    service.say(f"listening on http://{host}:{port}")
    server.run()
    if service.failed:
        raise EdgeError(service.failed)
    return 0


def pin_cpus(cpus: list[int]) -> None:
    """Pin this process (and the threads it starts later) to the given CPUs."""
    try:
        os.sched_setaffinity(0, set(cpus))
    except (OSError, ValueError) as exc:
        raise EdgeError(f"Cannot pin to CPUs {cpus}: {exc}.") from None
