"""EngineCache: engines built once per device and kept in a volume, so later starts skip the build.

Layout under the cache root (see docs/runtime.md)::

    engines/<key><suffix>      the engine, a plain file other tools can load (no header prepended)
    engines/<key>.json         sidecar: key parts, sha256, size, build seconds, created, backend, device
    timing/<trt>-<gpu>.cache   TensorRT timing cache, shared by every model on this TensorRT + GPU
    timing/<...>.cache.lock    held while a build merges its timings into that file (shared_file_lock)
    quarantine/                corrupt, truncated or foreign entries, moved aside for inspection
    locks/<key>.lock           one filelock per key: two processes starting at once build once

The key is the sha256 of the canonical JSON of its parts (``engine_key``); anything that changes the
engine (bundle, backend version, the backend's build recipe, L4T, GPU, precision, batch profile) changes
the key, so an upgrade misses the cache instead of loading a stale engine.

Files shared between processes (engines, the timing cache) are written by ``atomic_write`` (a temp file
whose name is unique per writer, not per PID alone: the PID is 1 in every container) and, where writers
merge into one file, under ``shared_file_lock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from edge_runtime.backends.base import Backend, BuildOptions, Engine
from edge_runtime.bundle import ModelBundle
from edge_runtime.device import DeviceIdentity
from edge_runtime.errors import CacheError, EdgeError, EngineLoadTransient

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1


@dataclass(frozen=True)
class CacheKey:
    digest: str
    parts: dict[str, Any]


def engine_key(
    bundle_sha256: str,
    backend: str,
    backend_version: str,
    device: DeviceIdentity,
    options: BuildOptions,
    build_recipe: str = "",
) -> CacheKey:
    """The one place the key is derived: sha256 of canonical JSON of every part that changes the engine.

    ``build_recipe`` is the backend's own version of how it builds (flags, network creation): a change there
    misses engines built the old way even when the library version is the same.
    """
    parts: dict[str, Any] = {
        "bundle_sha256": bundle_sha256,
        "backend": backend,
        "backend_version": backend_version,
        "build_recipe": build_recipe,
        "device": device.key_parts(),
        "precision": options.precision,
        "batch": [options.batch.min, options.batch.opt, options.batch.max],
        "workspace_bytes": options.workspace_bytes,  # TensorRT tactics depend on it
    }
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return CacheKey(hashlib.sha256(canonical.encode()).hexdigest(), parts)


@dataclass
class CacheEntry:
    key: str
    engine_path: Path
    sidecar_path: Path
    meta: dict[str, Any]

    @property
    def created(self) -> str:
        return str(self.meta.get("created", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "engine": str(self.engine_path),
            **{k: v for k, v in self.meta.items() if k != "key"},
        }


@dataclass
class CachedEngine:
    """An engine ready to run, and how it was obtained (for logs, /metrics and benchmarks)."""

    engine: Engine
    key: CacheKey
    hit: bool
    build_seconds: float  # 0 on a hit
    load_seconds: float
    path: Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename inside it survives a power cut (shared with the bundle writer)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temp file beside it, fsync, rename, fsync of the directory.

    The temp name carries the PID and a random part, so two writers (two containers, both PID 1) never share
    one. Raises OSError; the temp file is removed on failure.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def shared_file_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold ``<path>.lock`` while reading, merging and replacing a file several processes update (the timing
    cache). Raises CacheError when another holder keeps it longer than ``timeout``."""
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise CacheError(f"Timed out after {timeout:.0f} s waiting for the lock on {path.name}.") from None
    try:
        yield
    finally:
        lock.release()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


class EngineCache:
    """Get-or-build of serialized engines under a file lock, with atomic writes and quarantine."""

    def __init__(self, root: str | Path, keep: int = 3, lock_timeout_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        self.lock_timeout_s = lock_timeout_s
        self.engines = self.root / "engines"
        self.timing = self.root / "timing"
        self.quarantine_dir = self.root / "quarantine"
        self.locks = self.root / "locks"
        self._locks: dict[str, FileLock] = {}  # one instance per key, so nested acquires are re-entrant

    # -- setup ----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout and prove the directory is writable, so a bad volume fails at start."""
        try:
            for d in (self.engines, self.timing, self.quarantine_dir, self.locks):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test.{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise CacheError(
                f"Engine cache directory {self.root} is not writable ({exc.strerror or exc})."
            ) from None

    def timing_cache_path(self, trt_version: str, gpu: str) -> Path:
        """TensorRT timing cache, keyed by TensorRT version and GPU only, so other models reuse it."""
        return self.timing / f"{_slug(trt_version)}-{_slug(gpu)}.cache"

    def _paths(self, key: str, suffix: str) -> tuple[Path, Path]:
        return self.engines / f"{key}{suffix}", self.engines / f"{key}.json"

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float | None = None) -> Iterator[None]:
        lock = self._locks.setdefault(key, FileLock(str(self.locks / f"{key}.lock")))
        wait = self.lock_timeout_s if timeout is None else timeout
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("another process is building engine %s; waiting for it", key[:12])
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise CacheError(
                    f"Timed out after {wait:.0f} s waiting for another process to build engine {key[:12]}."
                ) from None
        try:
            yield
        finally:
            lock.release()

    # -- atomic writes -------------------------------------------------------------------------------
    def _write_atomic(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"No space left on the device while writing {path.name} to {path.parent}; "
                    "the partial file was removed and existing engines are intact."
                ) from None
            raise CacheError(f"Could not write {path} ({exc.strerror or exc}).") from None

    def _remove_stale_temps(self, key: str) -> None:
        """Temp files of a writer that died (killed mid-write); called while holding the key's lock."""
        for tmp in self.engines.glob(f".{key}*.tmp"):
            log.warning("removing %s left by an interrupted engine write", tmp.name)
            with contextlib.suppress(OSError):
                tmp.unlink()

    # -- entries -------------------------------------------------------------------------------------
    def _read_sidecar(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def check(self, key: str, suffix: str) -> tuple[bytes | None, str]:
        """Read and verify one entry: (engine bytes, "") or (None, why it is unusable / "missing")."""
        engine_path, sidecar = self._paths(key, suffix)
        if not sidecar.exists() and not engine_path.exists():
            return None, "missing"
        meta = self._read_sidecar(sidecar)
        if meta is None:
            return None, "sidecar missing or unreadable"
        if meta.get("key") != key:
            return None, f"sidecar names key {str(meta.get('key'))[:12]}, not this entry"
        try:
            data = engine_path.read_bytes()
        except OSError:
            return None, "engine file missing"
        if len(data) != meta.get("size"):
            return None, f"engine is {len(data)} bytes, sidecar says {meta.get('size')} (truncated)"
        if _sha256(data) != meta.get("sha256"):
            return None, "engine sha256 does not match its sidecar (corrupt)"
        return data, ""

    def quarantine(self, key: str, suffix: str, reason: str) -> None:
        """Move an unusable entry aside (never delete evidence, never crash the service)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        for p in self._paths(key, suffix):
            if p.exists():
                with contextlib.suppress(OSError):
                    os.replace(p, self.quarantine_dir / f"{p.name}.{stamp}")
        with contextlib.suppress(OSError):
            (self.quarantine_dir / f"{key}.{stamp}.reason").write_text(reason + "\n")
        log.warning("engine %s quarantined: %s", key[:12], reason)

    def entries(self) -> list[CacheEntry]:
        out = []
        for sidecar in sorted(self.engines.glob("*.json")):
            meta = self._read_sidecar(sidecar) or {}
            key = sidecar.stem
            engine_name = meta.get("engine") or ""
            out.append(CacheEntry(key, self.engines / str(engine_name), sidecar, meta))
        out.sort(key=lambda e: e.created, reverse=True)
        return out

    def verify(self, quarantine: bool = False) -> list[dict[str, Any]]:
        """Check every entry's checksum; optionally quarantine the bad ones."""
        report = []
        for entry in self.entries():
            suffix = entry.engine_path.name[len(entry.key) :] if entry.engine_path.name else ""
            data, why = self.check(entry.key, suffix) if suffix else (None, "sidecar names no engine file")
            ok = data is not None
            if not ok and quarantine:
                self.quarantine(entry.key, suffix, why)
            report.append({"key": entry.key, "ok": ok, "problem": why or None})
        return report

    def clear(self) -> int:
        """Remove every engine and sidecar (the timing cache stays: it is not model-specific)."""
        n = 0
        for p in list(self.engines.iterdir()) if self.engines.is_dir() else []:
            if p.suffix == ".json":
                n += 1
            with contextlib.suppress(OSError):
                p.unlink()
        return n

    def evict(self, protect: str) -> list[str]:
        """Keep the newest ``keep`` entries (by sidecar ``created``); skip entries another process holds."""
        removed = []
        for entry in self.entries()[self.keep :]:
            if entry.key == protect:
                continue
            lock = self._locks.setdefault(entry.key, FileLock(str(self.locks / f"{entry.key}.lock")))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                for p in (entry.engine_path, entry.sidecar_path):
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(entry.key)
            finally:
                lock.release()
        if removed:
            log.info("evicted %d old engine(s), keeping the newest %d", len(removed), self.keep)
        return removed

    # -- get-or-build --------------------------------------------------------------------------------
    def _store(self, key: CacheKey, backend: Backend, data: bytes, build_s: float) -> Path:
        engine_path, sidecar = self._paths(key.digest, backend.engine_suffix)
        meta = {
            "schema": SIDECAR_SCHEMA,
            "key": key.digest,
            "parts": key.parts,
            "engine": engine_path.name,
            "sha256": _sha256(data),
            "size": len(data),
            "build_seconds": round(build_s, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "backend": backend.name,
            "backend_version": key.parts.get("backend_version"),
            "device": key.parts.get("device"),
        }
        # The sidecar is written last: an engine without a sidecar is an incomplete entry, never loaded.
        self._write_atomic(engine_path, data)
        try:
            self._write_atomic(sidecar, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        except CacheError:
            with contextlib.suppress(OSError):
                engine_path.unlink()
            raise
        return engine_path

    def open(
        self,
        backend: Backend,
        bundle: ModelBundle,
        options: BuildOptions,
        device: DeviceIdentity,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 5.0,
    ) -> CachedEngine:
        """Load the engine for this bundle/backend/device, building and storing it on a miss.

        A corrupt, truncated or undeserializable entry is quarantined and rebuilt once; a load that fails
        for a transient reason (``EngineLoadTransient``: out of GPU memory, no CUDA stream) raises and keeps
        the entry; a build failure leaves the cache as it was.
        """
        self.prepare()
        recipe = str(getattr(backend, "build_recipe", ""))  # optional: not every backend versions its recipe
        key = engine_key(bundle.sha256, backend.name, backend.version(), device, options, recipe)
        suffix = backend.engine_suffix
        engine_path, _ = self._paths(key.digest, suffix)

        hit = self._try_load(key, backend, bundle, options)
        if hit is not None:
            return hit
        with self.lock(key.digest):
            hit = self._try_load(key, backend, bundle, options)  # another process may have built it
            if hit is not None:
                return hit
            self._remove_stale_temps(key.digest)
            t0 = time.monotonic()
            data = self._build_with_progress(backend, bundle, options, device, progress, progress_every_s)
            build_s = time.monotonic() - t0
            self._store(key, backend, data, build_s)
            t1 = time.monotonic()
            engine = backend.load(data, bundle, options)
            load_s = time.monotonic() - t1
        self.evict(protect=key.digest)
        return CachedEngine(
            engine, key, hit=False, build_seconds=build_s, load_seconds=load_s, path=engine_path
        )

    def _try_load(
        self, key: CacheKey, backend: Backend, bundle: ModelBundle, options: BuildOptions
    ) -> CachedEngine | None:
        suffix = backend.engine_suffix
        data, why = self.check(key.digest, suffix)
        if data is None:
            if why != "missing":
                with self.lock(key.digest):
                    data, why = self.check(key.digest, suffix)  # re-check: a writer may have just finished
                    if data is None and why != "missing":
                        self.quarantine(key.digest, suffix, why)
            if data is None:
                return None
        t0 = time.monotonic()
        try:
            engine = backend.load(data, bundle, options)
        except EngineLoadTransient:
            raise  # out of GPU memory, no CUDA stream, no GPU: the engine is fine, keep it
        except EdgeError as exc:
            with self.lock(key.digest):
                self.quarantine(key.digest, suffix, f"backend could not load it: {exc}")
            return None
        engine_path, _ = self._paths(key.digest, suffix)
        with contextlib.suppress(OSError):
            os.utime(engine_path)
        return CachedEngine(
            engine, key, hit=True, build_seconds=0.0, load_seconds=time.monotonic() - t0, path=engine_path
        )

    def _build_with_progress(
        self,
        backend: Backend,
        bundle: ModelBundle,
        options: BuildOptions,
        device: DeviceIdentity,
        progress: Callable[[str], None] | None,
        every_s: float,
    ) -> bytes:
        """Build, reporting elapsed time every few seconds so a 10-minute TensorRT build is not silent."""
        say = progress or (lambda msg: log.info("%s", msg))
        if options.timing_cache is None:  # backends without a timing cache ignore it
            timing = self.timing_cache_path(backend.version(), device.gpu)
            options = dataclasses.replace(options, timing_cache=timing)
        say(
            f"building {backend.name} engine for {bundle.manifest.name} ({options.precision}, batch {options.batch})"
        )
        done = threading.Event()
        t0 = time.monotonic()

        def ticker() -> None:
            while not done.wait(every_s):
                say(f"still building {backend.name} engine: {time.monotonic() - t0:.0f} s elapsed")

        thread = threading.Thread(target=ticker, name="build-progress", daemon=True)
        thread.start()
        try:
            data = backend.build(bundle, options)
        finally:
            done.set()
            thread.join()
        say(f"built {backend.name} engine in {time.monotonic() - t0:.1f} s ({len(data) / 1e6:.1f} MB)")
        return data
