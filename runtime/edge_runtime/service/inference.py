"""The inference service without HTTP: its models' engines, their start-up, the watchdog and the thermal
governor.

Start-up: probe → bundles (one, or a model repository), backend, memory budget → per model: engine cache
get-or-build (progress lines while a long build runs) → warm-up → ready once every model is.
HTTP (``service.app``) and the ROS 2 bridge both call ``InferenceService.infer``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import Backend, BackendChoice, BuildOptions, Engine, check_feeds, select_backend
from edge_runtime.bundle import ModelBundle
from edge_runtime.cache import CachedEngine, EngineCache
from edge_runtime.device import DeviceProbe, probe
from edge_runtime.errors import EdgeError, InputError, RequestError
from edge_runtime.repository import (
    PIPELINES_FILE,
    check_budget,
    check_pipeline_feeds,
    discover,
    footprint,
    is_repository,
    load_pipelines,
    memory_budget,
    parse_slots,
)
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.models import ServedModel, ServedPipeline
from edge_runtime.thermal import ThermalGovernor, ThermalPolicy

# The package's name, not this module's: operators grep logs for "edge_runtime.service" (docs/runtime.md).
log = logging.getLogger("edge_runtime.service")

MIB = 1 << 20
REASON_LABEL_CHARS = 300  # the fallback sentence as a metric label: bounded, a label is not a log
# Exit status when the watchdog gives up on a hung inference (EX_TEMPFAIL in sysexits.h: "try again later").
# A stuck engine call cannot be interrupted, so the process leaves and the container's restart policy
# (compose: restart: unless-stopped) starts it again; docs/runtime.md has the measured times.
EXIT_HUNG = 75


@dataclass
class ServiceConfig:
    """Everything ``edge-runtime serve`` takes; the CLI fills it from flags and EDGE_* variables."""

    bundle: Path | None
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
    # A model repository (docs/runtime.md): served when it exists and holds bundle directories, else ``bundle``.
    models: Path | None = None
    slots: str | int | None = None  # request slots: N for every model, or "name=N,..." (default 1)
    memory_budget_mb: float | None = None  # overrides the board's memory in the budget check


class InferenceService:
    """Owns the models' engines, the watchdog and the thermal governor; the HTTP app is a thin layer on top.

    ``bundle``, ``engine`` and ``cached`` are the default model's (the only one, else the first by name):
    what the unnamed ``/v1/infer``, the ROS 2 bridge and single-model callers use."""

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
        self.models: dict[str, ServedModel] = {}
        self.pipelines: dict[str, ServedPipeline] = {}
        self.default: str | None = None
        self.repository: Path | None = None  # the model repository served, None for a single bundle
        self.backend: Backend | None = None
        self.backend_choice: BackendChoice | None = None
        self.cache = EngineCache(config.cache, keep=config.cache_keep)
        self.device: DeviceProbe | None = None
        self.ready = False
        self.draining = False
        self.failed: str | None = None
        self.unhealthy: str | None = None
        # Called once when an inference has overrun its deadline by ``hung_exit_s``; serve() exits there.
        self.on_hung: Callable[[str], None] | None = None
        self._hung_called = False
        self.startup: dict[str, Any] = {}
        self._t0 = time.monotonic()
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
        bundles = self._bundles()
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
        slots = parse_slots(self.config.slots, list(bundles))
        self.models = {n: ServedModel(n, b, slots[n], self.metrics) for n, b in bundles.items()}
        self.default = next(iter(self.models))
        pipelines_file = self.repository / PIPELINES_FILE if self.repository else None
        if pipelines_file is not None and pipelines_file.is_file():
            self.pipelines = {
                p.name: ServedPipeline(p, self.metrics) for p in load_pipelines(pipelines_file, bundles)
            }
            self.say(f"pipelines: {', '.join(self.pipelines)}")
        # Every model's engine stays in the cache: eviction keeps this many recently used entries.
        self.cache.keep = max(self.cache.keep, len(self.models) + 1)
        self.check_memory()

    def _bundles(self) -> dict[str, ModelBundle]:
        """The repository's bundles by directory name, or the single bundle under its manifest's name."""
        models = self.config.models
        if models is not None and is_repository(models):
            self.repository = models
            found = discover(models)
            bundles = {name: ModelBundle.load(path) for name, path in found.items()}
            self.say(f"model repository {models}: {', '.join(bundles)}")
            return bundles
        if self.config.bundle is None:
            where = f" and {models} holds no model bundle directory" if models is not None else ""
            raise EdgeError(f"No model to serve: no bundle was given{where}.", option="bundle")
        bundle = ModelBundle.load(self.config.bundle)
        return {bundle.manifest.name: bundle}

    def check_memory(self) -> None:
        """Refuse, before any engine loads, a set of models whose estimated memory exceeds the budget."""
        assert self.backend is not None and self.device is not None
        meminfo = self.config.device_root / "proc" / "meminfo"
        budget = memory_budget(self.device.model, self.config.memory_budget_mb, meminfo)
        prints = []
        missing = False
        for m in self.models.values():
            size = self.cache.cached_size(self.backend, m.bundle, self.options(m), self.device.identity)
            missing = missing or size is None
            prints.append(footprint(m.name, m.bundle, m.slots, size))
        extra = None
        if self.backend.name == "tensorrt" and missing:
            extra = (
                "TensorRT build workspace",
                self.options(next(iter(self.models.values()))).workspace_bytes,
            )
        total = check_budget(prints, budget, extra)
        if budget is None:
            log.info("memory budget: unknown here, not checked (estimated need %.0f MiB)", total / MIB)
        else:
            self.say(
                f"memory: {total / MIB:.0f} MiB estimated for {len(prints)} model(s), "
                f"budget {budget.bytes / MIB:.0f} MiB ({budget.source})"
            )

    # The default model's parts, as single-model callers knew them.
    @property
    def default_model(self) -> ServedModel | None:
        return self.models.get(self.default) if self.default is not None else None

    @property
    def bundle(self) -> ModelBundle | None:
        m = self.default_model
        return m.bundle if m is not None else None

    @property
    def engine(self) -> Engine | None:
        m = self.default_model
        return m.engine if m is not None else None

    @property
    def cached(self) -> CachedEngine | None:
        m = self.default_model
        return m.cached if m is not None else None

    def _board(self) -> str:
        """The board's name; an L4T release without a device tree (a container that cannot see /proc's) is
        still a Jetson userspace, not 'not a Jetson'."""
        assert self.device is not None
        if self.device.identity.board:
            return self.device.identity.board
        return "Jetson (board not visible)" if self.device.is_jetson else "not a Jetson"

    def options(self, model: ServedModel | None = None) -> BuildOptions:
        m = model or self.default_model
        assert m is not None
        return BuildOptions.for_bundle(
            m.bundle,
            self.device.model if self.device is not None else None,
            self.config.precision,
            intra_op_threads=self.config.intra_op_threads,
            spin_wait=self.config.spin_wait,
            cuda_graph=self.config.cuda_graph,
            slots=m.slots,
        )

    def load(self) -> None:
        """Per model in order: cache get-or-build, then warm-up; ready once every model is. Raises EdgeError
        (naming the model when a repository is served) on failure."""
        if not self.models:
            self.prepare()
        for m in self.models.values():
            try:
                self._load_model(m)
            except Exception as exc:
                if self.repository is not None and exc.args:
                    exc.args = (f"Model {m.name!r}: {exc}", *exc.args[1:])
                m.mark_ready(False, str(exc))
                raise
        assert self.default_model is not None
        self.startup = dict(self.default_model.startup, time_to_ready_s=time.monotonic() - self._t0)
        if len(self.models) > 1:
            self.startup["models"] = {n: m.startup for n, m in self.models.items()}
        self.ready = True
        self.metrics.ready.set(1)
        self.say(
            f"ready in {self.startup['time_to_ready_s']:.2f} s "
            + (
                f"({len(self.models)} models, {self.config.warmup_runs} warm-up runs each)"
                if len(self.models) > 1
                else f"({'cache hit' if self.startup['cache_hit'] else 'built engine'}, "
                f"{self.config.warmup_runs} warm-up runs)"
            )
        )

    def _load_model(self, m: ServedModel) -> None:
        assert self.backend is not None and self.device is not None
        t0 = time.monotonic()
        cached = self.cache.open(
            self.backend, m.bundle, self.options(m), self.device.identity, progress=self.say
        )
        result = "hit" if cached.hit else "miss"
        self.metrics.cache.labels(result).inc()
        m.cache_counter.labels(m.name, result).inc()
        self.metrics.build_seconds.set(cached.build_seconds)
        named = f"{m.name}: " if len(self.models) > 1 else ""
        self.say(
            f"{named}engine cache {result}: key {cached.key.digest[:12]} "
            f"(build {cached.build_seconds:.2f} s, load {cached.load_seconds:.3f} s)"
        )
        m.cached, m.engine = cached, cached.engine
        feeds = self.example_feeds(m.batch.opt, m.name)
        tw = time.monotonic()
        for _ in range(max(self.config.warmup_runs, 0)):
            m.engine.infer(feeds)
        warm_s = time.monotonic() - tw
        m.startup = {
            "cache_hit": cached.hit,
            "key": cached.key.digest,
            "build_seconds": cached.build_seconds,
            "load_seconds": cached.load_seconds,
            "warmup_seconds": warm_s,
            "engine_seconds": time.monotonic() - t0,
            "time_to_ready_s": time.monotonic() - self._t0,
            "backend": self.backend.name,
        }
        m.mark_ready(True)

    def example_feeds(self, batch: int, model: str | None = None) -> dict[str, np.ndarray]:
        m = self.models.get(model or self.default or "")
        assert m is not None
        return {s.name: np.zeros(s.concrete_shape(batch), dtype=s.dtype) for s in m.inputs}

    # -- inference -----------------------------------------------------------------------------------
    def target(self, name: str | None = None) -> ServedModel | ServedPipeline:
        """The model (or pipeline) a request names, the default model when it names none; 404 otherwise."""
        if name is None:
            m = self.default_model
            if m is None:
                raise RequestError(
                    503, "not_ready", "The engine is not loaded yet; retry when /readyz is 200."
                )
            return m
        found = self.models.get(name) or self.pipelines.get(name)
        if found is None:
            served = ", ".join([*self.models, *self.pipelines]) or "nothing yet"
            raise RequestError(
                404, "unknown_model", f"Model {name!r} is not served here; this service serves {served}."
            )
        return found

    def infer(self, feeds: Mapping[str, np.ndarray], model: str | None = None) -> dict[str, np.ndarray]:
        """Checked, watched inference of a model or pipeline (default: the default model): used by HTTP and
        by the ROS 2 bridge."""
        target = self.target(model) if model is not None or self.models else None
        if target is None or not self.target_ready(target):
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
        t0 = time.perf_counter()
        if isinstance(target, ServedPipeline):
            try:
                check_pipeline_feeds(target.pipeline, feeds)
            except InputError as exc:
                raise RequestError(400, "bad_input", str(exc)) from None
            out = target.pipeline.run(feeds, self._step)
        else:
            out = self._infer_model(target, feeds)
        elapsed = time.perf_counter() - t0
        self.metrics.infer_latency.observe(elapsed)
        target.latency.observe(elapsed)
        return out

    def target_ready(self, target: ServedModel | ServedPipeline) -> bool:
        if isinstance(target, ServedPipeline):
            return all(self.models[m].ready for m in target.pipeline.models)
        return target.ready and target.engine is not None

    def _step(self, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One pipeline step: the model's own checks and slots (its sentence names the model)."""
        try:
            return self._infer_model(self.models[model], feeds)
        except RequestError as exc:
            raise RequestError(exc.status, exc.reason, f"Pipeline step {model!r}: {exc}") from None

    def _infer_model(self, m: ServedModel, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            batch = check_feeds(m.inputs, feeds, m.batch)
        except InputError as exc:
            raise RequestError(400, "bad_input", str(exc)) from None
        cap = self.thermal.max_batch()
        with self._watch():
            if cap is not None and batch > cap:
                parts = [m.run({k: v[i : i + cap] for k, v in feeds.items()}) for i in range(0, batch, cap)]
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            return m.run(feeds)

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
        for m in self.models.values():
            m.close()
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
        if self.default is not None:  # the name under /v2/models/ (the fleet's health gate reads it)
            body["model"] = self.default
        if self.backend_choice is not None:  # the fleet's gate refuses a silent CPU fallback from these
            body["backend"] = self.backend_choice.backend.name
            body["backend_requested"] = self.backend_choice.requested
            if self.backend_choice.fallback:
                body["fallback"] = self.backend_choice.fallback
        elif self.backend is not None:
            body["backend"] = self.backend.name
        if self.startup:
            body["startup"] = self.startup
        if self.models:  # every model served, so the gate can smoke-test each (several: a repository)
            backend = self.backend.name if self.backend is not None else ""
            body["models"] = {
                n: {"ready": m.ready, "backend": backend} | ({"reason": m.reason} if m.reason else {})
                for n, m in self.models.items()
            }
        ok = self.ready and not self.draining and not self.failed and self.thermal.state != "critical"
        hung = self.unhealthy
        if hung:  # Docker's health check reads /readyz: a stuck engine must fail it too
            ok = False
            body["reason"] = hung
        return (200 if ok else 503), body
