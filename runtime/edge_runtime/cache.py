"""EngineCache: engines built once per device and kept in a volume, so later starts skip the build.

Layout under the cache root (see docs/runtime.md)::

    engines/<key><suffix>      the engine, a plain file other tools can load (no header prepended)
    engines/<key>.json         sidecar: key parts, sha256, size, build seconds, created, backend, device
    pins/<name>                a release the robot keeps (``engine build --pin``): keys eviction never removes
    timing/<trt>-<gpu>.cache   TensorRT timing cache, shared by every model on this TensorRT + GPU
    timing/<...>.cache.lock    held while a build merges its timings into that file (shared_file_lock)
    quarantine/<id>/           one unusable entry per distinct bytes (<id>: their sha256): record.json (key,
                               reasons, how often it came back) and, room permitting, the engine and sidecar
    locks/<key>.lock           one filelock per key: two processes starting at once build once
    locks/{pins,quarantine}.lock

The key is the sha256 of the canonical JSON of its parts (``engine_key``); anything that changes the
engine (bundle, backend version, the backend's build recipe, L4T, GPU, precision, batch profile) changes
the key, so an upgrade misses the cache instead of loading a stale engine.

Files shared between processes (engines, the timing cache) are written by ``atomic_write`` (a temp file
whose name is unique per writer, not per PID alone: the PID is 1 in every container) and, where writers
merge into one file, under ``shared_file_lock``. Each write happens under a lock, so what a killed writer
left behind is recognised at the next start (``repair``: the lock is free) and removed.

Bounds: eviction keeps every pinned key plus the ``keep`` most recently used other entries; the quarantine
keeps ``quarantine_keep`` entries and at most ``quarantine_max_bytes`` of their files, and keeps no bytes at
all when the volume would be left with less than the bad engine's size plus ``min_free_bytes`` (the rebuild
needs that room). A full volume still loads what it holds; only a build fails, with one sentence.
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
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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
QUARANTINE_SCHEMA = 1
MISSING = "missing"
INCOMPLETE = "incomplete"  # prefix: an engine without its sidecar or the reverse, what a killed write leaves
PIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # a release version or an image id; a file name
_KEY = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\.(?P<target>.+)\.\d+\.[0-9a-f]{12}\.tmp")  # atomic_write's temp names
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
    if options.shape_ranges:  # non-batch axis ranges shape the optimization profile (absent: keys unchanged)
        parts["shape_ranges"] = [[name, [list(s) for s in shapes]] for name, shapes in options.shape_ranges]
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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_pin_name(name: str) -> str:
    """A pin name becomes a file name under ``pins/``: letters, digits and ``._+-``, like a version."""
    if not PIN_NAME.fullmatch(name):
        raise CacheError(
            f"{name!r} is not a valid pin name (1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit)."
        )
    return name


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """A fresh lock on ``path``, taken only if nobody holds it now (yields False otherwise): a fresh instance,
    so a lock this process already holds counts as held."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
        held = True
    except Timeout:
        held = False
    try:
        yield held
    finally:
        if held:
            lock.release()


class EngineCache:
    """Get-or-build of serialized engines under a file lock: atomic writes, pins, a bounded quarantine."""

    def __init__(
        self,
        root: str | Path,
        keep: int = 3,
        lock_timeout_s: float = 3600.0,
        quarantine_keep: int = 3,
        quarantine_max_bytes: int = 512 << 20,
        min_free_bytes: int = 256 << 20,
    ) -> None:
        self.root = Path(root)
        self.keep = max(0, keep)
        self.lock_timeout_s = lock_timeout_s
        self.quarantine_keep = max(1, quarantine_keep)
        self.quarantine_max_bytes = max(0, quarantine_max_bytes)
        self.min_free_bytes = max(0, min_free_bytes)
        self.engines = self.root / "engines"
        self.timing = self.root / "timing"
        self.quarantine_dir = self.root / "quarantine"
        self.locks = self.root / "locks"
        self.pins_dir = self.root / "pins"
        self.full = (
            False  # prepare() found no room: cached engines still load, a build fails with one sentence
        )
        self._locks: dict[str, FileLock] = {}  # one instance per key, so nested acquires are re-entrant

    # -- setup ----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout and prove the directory is writable, so a bad volume fails at start. A full
        volume is not refused here: an engine already on it still loads; a build fails with one sentence."""
        try:
            for d in (self.engines, self.timing, self.quarantine_dir, self.locks, self.pins_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                probe.write_bytes(b"ok")
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink()
            self.full = False
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise CacheError(
                    f"Engine cache directory {self.root} is not writable ({exc.strerror or exc})."
                ) from None
            if not self.full:  # said once per cache, though the service and open() both prepare
                log.warning(
                    "the engine cache volume %s is full: an engine cached there still loads, a build will fail",
                    self.root,
                )
            self.full = True

    def timing_cache_path(self, trt_version: str, gpu: str) -> Path:
        """TensorRT timing cache, keyed by TensorRT version and GPU only, so other models reuse it."""
        return self.timing / f"{_slug(trt_version)}-{_slug(gpu)}.cache"

    def _paths(self, key: str, suffix: str) -> tuple[Path, Path]:
        return self.engines / f"{key}{suffix}", self.engines / f"{key}.json"

    def _no_space(self, what: str) -> CacheError:
        return CacheError(
            f"No space left on the device while writing {what} to {self.root}; "
            "the partial file was removed and existing engines are intact."
        )

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float | None = None) -> Iterator[None]:
        lock = self._locks.setdefault(key, FileLock(str(self.locks / f"{key}.lock")))
        wait = self.lock_timeout_s if timeout is None else timeout
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("another process is building engine %s; waiting for it", key[:12])
                try:
                    lock.acquire(timeout=wait)
                except Timeout:
                    raise CacheError(
                        f"Timed out after {wait:.0f} s waiting for another process to build engine "
                        f"{key[:12]}."
                    ) from None
        except OSError as exc:  # the lock file cannot be made: a full volume, a cache that vanished
            if exc.errno in _NO_SPACE:
                raise self._no_space(f"the lock of engine {key[:12]}") from None
            raise CacheError(
                f"Could not lock engine {key[:12]} in {self.locks} ({exc.strerror or exc})."
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    # -- atomic writes -------------------------------------------------------------------------------
    def _write_atomic(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
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

    def repair(self) -> list[str]:
        """Remove what a process killed mid-write (SIGKILL, power cut) left, for every key, not only the one
        being opened: temp files, an engine whose sidecar never landed, a sidecar whose engine is gone, timing
        cache temps, a half-made quarantine entry. Whatever a live process holds (its lock is taken) is left
        alone. Returns the names removed; never raises (a repair that cannot run is retried next start)."""
        removed: list[str] = []
        try:
            removed += self._repair_engines()
            removed += self._repair_timing()
            if self.quarantine_dir.is_dir():
                with _try_lock(self.locks / "quarantine.lock") as free:
                    if free:
                        removed += self._repair_quarantine()
        except OSError as exc:
            log.warning("could not repair the engine cache %s (%s)", self.root, exc.strerror or exc)
        for name in removed:
            log.warning("removed %s, left by an interrupted write", name)
        return removed

    def _incomplete(self, key: str) -> list[Path]:
        """Files of ``key`` that are not a complete entry: temps, an engine without its sidecar, a sidecar
        whose engine is missing."""
        out = [p for p in self.engines.glob(f".{key}*.tmp")]
        sidecar = self.engines / f"{key}.json"
        engines = [p for p in self.engines.glob(f"{key}*") if p != sidecar and not p.name.startswith(".")]
        if not sidecar.exists():
            out += engines
        else:
            meta = self._read_sidecar(sidecar)
            name = str(meta.get("engine") or "") if meta else ""
            if meta is not None and name and not (self.engines / name).exists():
                out.append(sidecar)
        return out

    def _repair_engines(self) -> list[str]:
        if not self.engines.is_dir():
            return []
        keys = set()
        for p in self.engines.iterdir():
            m = _TEMP.fullmatch(p.name)
            head = (m.group("target") if m else p.name)[:64]
            if _KEY.fullmatch(head):
                keys.add(head)
        removed = []
        for key in sorted(keys):
            if not self._incomplete(key):
                continue
            with _try_lock(self.locks / f"{key}.lock") as free:
                if not free:
                    continue  # a live writer: its files are not leftovers
                for p in self._incomplete(key):  # again, under the lock: the writer may have just finished
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        removed.append(f"engines/{p.name}")
        return removed

    def _repair_timing(self) -> list[str]:
        removed = []
        for tmp in self.timing.glob(".*.tmp") if self.timing.is_dir() else []:
            m = _TEMP.fullmatch(tmp.name)
            if m is None:
                continue
            with _try_lock(self.timing / f"{m.group('target')}.lock") as free:
                if free:  # timing writes happen under this lock (shared_file_lock): nobody is writing
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                        removed.append(f"timing/{tmp.name}")
        return removed

    def _repair_quarantine(self) -> list[str]:
        """Called under the quarantine lock: entries without a record, temp files."""
        removed = []
        for d in self.quarantine_dir.iterdir():
            if d.is_dir() and not (d / "record.json").exists():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"quarantine/{d.name}/")
            elif d.is_dir():
                for tmp in d.glob(".*.tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                        removed.append(f"quarantine/{d.name}/{tmp.name}")
        return removed

    # -- entries -------------------------------------------------------------------------------------
    def _read_sidecar(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def check(self, key: str, suffix: str) -> tuple[bytes | None, str]:
        """Read and verify one entry: (engine bytes, "") or (None, why it is unusable / "missing";
        "incomplete: ..." for what an interrupted write leaves, removed rather than quarantined)."""
        engine_path, sidecar = self._paths(key, suffix)
        has_engine, has_sidecar = engine_path.exists(), sidecar.exists()
        if not has_sidecar and not has_engine:
            return None, MISSING
        if not has_sidecar:
            return None, f"{INCOMPLETE}: the engine has no sidecar (its write was interrupted)"
        meta = self._read_sidecar(sidecar)
        if meta is None:
            return None, "sidecar unreadable"
        if meta.get("key") != key:
            return None, f"sidecar names key {str(meta.get('key'))[:12]}, not this entry"
        if not has_engine:
            return None, f"{INCOMPLETE}: the sidecar's engine file is missing"
        try:
            data = engine_path.read_bytes()
        except OSError as exc:
            return None, f"engine file unreadable ({exc.strerror or exc})"
        if len(data) != meta.get("size"):
            return None, f"engine is {len(data)} bytes, sidecar says {meta.get('size')} (truncated)"
        if _sha256(data) != meta.get("sha256"):
            return None, "engine sha256 does not match its sidecar (corrupt)"
        return data, ""

    def _discard(self, key: str, suffix: str, why: str) -> None:
        """Remove an incomplete entry (what a killed write left): no evidence of a bad engine to keep."""
        for p in reversed(self._paths(key, suffix)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        log.warning("engine %s removed: %s", key[:12], why.removeprefix(f"{INCOMPLETE}: "))

    # -- quarantine ----------------------------------------------------------------------------------
    def quarantine(self, key: str, suffix: str, reason: str) -> None:
        """Move an unusable entry out of ``engines/`` for inspection, within the quarantine's bounds; the same
        bad bytes again only count a repeat. Never raises: whatever cannot be kept is deleted (the entry must
        leave ``engines/``, or every start finds it again), and a full volume keeps nothing."""
        engine_path, sidecar = self._paths(key, suffix)
        try:
            kept = self._quarantine(key, engine_path, sidecar, reason)
        except (OSError, EdgeError) as exc:
            kept = f"not kept: {exc}"
        for p in (sidecar, engine_path):  # sidecar first: a kill in between leaves an incomplete entry
            with contextlib.suppress(OSError):
                p.unlink()
        log.warning("engine %s quarantined (%s): %s", key[:12], kept, reason)

    def _quarantine(self, key: str, engine_path: Path, sidecar: Path, reason: str) -> str:
        files = [p for p in (engine_path, sidecar) if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        free = self._free_bytes()
        room = free is None or free >= size + self.min_free_bytes
        if not room:
            return f"not kept: {free} bytes free on the volume, the rebuild needs them"
        digest = _file_sha256(engine_path) if engine_path.is_file() else _sha256(f"{key}:no engine".encode())
        with self._aux_lock("quarantine"):
            entry = self.quarantine_dir / digest[:32]
            record = self._read_record(entry)
            now = _now()
            if record is None:
                record = {
                    "schema": QUARANTINE_SCHEMA,
                    "key": key,
                    "engine": engine_path.name,
                    "sha256": digest if engine_path.is_file() else None,
                    "size": engine_path.stat().st_size if engine_path.is_file() else 0,
                    "count": 0,
                    "first_seen": now,
                    "bytes_kept": False,
                    "reasons": [],
                }
            record["count"] = int(record.get("count", 0)) + 1
            record["last_seen"] = now
            record["reason"] = reason
            record["reasons"] = ([r for r in record.get("reasons", []) if r != reason] + [reason])[-5:]
            if not record["bytes_kept"] and size <= self.quarantine_max_bytes:
                entry.mkdir(parents=True, exist_ok=True)
                for p in files:
                    os.replace(p, entry / p.name)
                record["bytes_kept"] = True
            else:
                entry.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write(
                    entry / "record.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
                )
            except OSError:
                if record["count"] == 1:  # a new entry without its record: not kept at all
                    shutil.rmtree(entry, ignore_errors=True)
                raise
            self._bound_quarantine(protect=entry.name)
        if record["count"] > 1:
            return f"seen {record['count']} times, one copy kept"
        return "kept" if record["bytes_kept"] else "record only"

    @contextlib.contextmanager
    def _aux_lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """``locks/<name>.lock``: pins and the quarantine are changed by one process at a time."""
        lock = FileLock(str(self.locks / f"{name}.lock"))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise CacheError(
                f"Timed out after {timeout:.0f} s waiting for the {name} lock in {self.locks}."
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _read_record(self, entry: Path) -> dict[str, Any] | None:
        try:
            record = json.loads((entry / "record.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _bound_quarantine(self, protect: str) -> None:
        """Keep the newest ``quarantine_keep`` entries and at most ``quarantine_max_bytes`` of their files
        (the oldest entries lose their files first, their records stay). Called under the quarantine lock."""
        legacy = [
            p for p in self.quarantine_dir.iterdir() if p.is_file()
        ]  # the flat layout of older releases
        for p in legacy:
            with contextlib.suppress(OSError):
                p.unlink()
        if legacy:
            log.warning("removed %d quarantined file(s) of the old flat layout", len(legacy))
        records = self.quarantined()
        for r in records[self.quarantine_keep :]:
            if r["id"] != protect:
                shutil.rmtree(self.quarantine_dir / r["id"], ignore_errors=True)
        records = [r for r in records[: self.quarantine_keep] if (self.quarantine_dir / r["id"]).is_dir()]
        total = sum(r["bytes"] for r in records)
        for r in reversed(records):  # oldest first
            if total <= self.quarantine_max_bytes:
                break
            if r["id"] == protect or not r["files"]:
                continue
            for f in r["files"]:
                with contextlib.suppress(OSError):
                    Path(f).unlink()
            total -= r["bytes"]
            entry = self.quarantine_dir / r["id"]
            record = {k: v for k, v in r.items() if k not in ("id", "files", "bytes")}
            record["bytes_kept"] = False
            with contextlib.suppress(OSError):
                atomic_write(
                    entry / "record.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
                )

    def quarantined(self) -> list[dict[str, Any]]:
        """Quarantine records, most recently seen first, each with its ``id``, the ``files`` kept (engine
        first) and their ``bytes``."""
        out = []
        for entry in self.quarantine_dir.iterdir() if self.quarantine_dir.is_dir() else []:
            record = self._read_record(entry) if entry.is_dir() else None
            if record is None:
                continue
            files = sorted(
                (p for p in entry.iterdir() if p.name != "record.json" and not p.name.startswith(".")),
                key=lambda p: (p.suffix == ".json", p.name),
            )
            record.update(
                id=entry.name, files=[str(p) for p in files], bytes=sum(p.stat().st_size for p in files)
            )
            out.append(record)
        out.sort(key=lambda r: str(r.get("last_seen", "")), reverse=True)
        return out

    # -- pins ------------------------------------------------------------------------------------------
    def pin(self, name: str, key: str | list[str]) -> Path:
        """Record that release ``name`` uses engine ``key`` (a release of several models: each model's key):
        eviction never removes them while the pin exists. A new pin of the same name replaces the old one."""
        check_pin_name(name)
        keys = [key] if isinstance(key, str) else list(key)
        for k in keys:
            if not _KEY.fullmatch(k):
                raise CacheError(f"{k[:80]!r} is not an engine key (64 lowercase hex digits).")
        self.prepare()
        path = self.pins_dir / name
        with self._aux_lock("pins"):
            self._write_atomic(
                path, (json.dumps({"name": name, "keys": keys, "pinned": _now()}) + "\n").encode()
            )
        return path

    def pins(self) -> dict[str, list[str]]:
        """Pin name → the engine keys it keeps (an unreadable pin keeps nothing, and is logged)."""
        out: dict[str, list[str]] = {}
        for p in sorted(self.pins_dir.iterdir()) if self.pins_dir.is_dir() else []:
            if not PIN_NAME.fullmatch(p.name) or not p.is_file():
                continue
            try:
                data = json.loads(p.read_text())
                keys = [str(k) for k in data["keys"] if _KEY.fullmatch(str(k))]
            except (OSError, ValueError, TypeError, KeyError):
                log.warning("pin %s is unreadable; it keeps no engine", p.name)
                keys = []
            out[p.name] = keys
        return out

    def unpin(self, names: Iterable[str]) -> list[str]:
        """Remove these pins; returns the names that existed."""
        removed = []
        targets = [check_pin_name(n) for n in names]
        with self._aux_lock("pins"):
            for name in targets:
                with contextlib.suppress(FileNotFoundError):
                    (self.pins_dir / name).unlink()
                    removed.append(name)
        return removed

    def prune(self, keep_pins: Iterable[str], keep: int | None = None) -> tuple[list[str], list[str]]:
        """Drop every pin but ``keep_pins`` (the releases the robot keeps), then evict: returns (pins dropped,
        keys evicted)."""
        kept = {check_pin_name(n) for n in keep_pins}
        dropped = self.unpin(sorted(n for n in self.pins() if n not in kept))
        return dropped, self.evict(keep=keep)

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
        """Check every entry's checksum; optionally quarantine the bad ones (incomplete ones are removed)."""
        report = []
        for entry in self.entries():
            suffix = entry.engine_path.name[len(entry.key) :] if entry.meta.get("engine") else ""
            data, why = self.check(entry.key, suffix) if suffix else (None, "sidecar names no engine file")
            ok = data is not None
            if not ok and quarantine:
                with self.lock(entry.key):
                    if why.startswith(INCOMPLETE):
                        self._discard(entry.key, suffix, why)
                    else:
                        self.quarantine(entry.key, suffix, why)
            report.append({"key": entry.key, "ok": ok, "problem": why or None})
        return report

    def clear(self) -> int:
        """Remove every engine and sidecar (the timing cache and the pins stay: neither is an engine)."""
        n = 0
        for p in list(self.engines.iterdir()) if self.engines.is_dir() else []:
            if p.suffix == ".json":
                n += 1
            with contextlib.suppress(OSError):
                p.unlink()
        return n

    @staticmethod
    def _last_used(entry: CacheEntry) -> float:
        """The engine file's mtime: set when written, touched on every load."""
        for p in (entry.engine_path, entry.sidecar_path):
            with contextlib.suppress(OSError):
                if p.is_file():
                    return p.stat().st_mtime
        return 0.0

    def evict(self, protect: str | None = None, keep: int | None = None) -> list[str]:
        """Keep every pinned key and the ``keep`` most recently used other entries; skip entries another
        process holds."""
        keep = self.keep if keep is None else max(0, keep)
        pinned = {k for keys in self.pins().values() for k in keys}
        others = sorted((e for e in self.entries() if e.key not in pinned), key=self._last_used, reverse=True)
        removed = []
        for entry in others[keep:]:
            if entry.key == protect:
                continue
            with _try_lock(self.locks / f"{entry.key}.lock") as free:
                if not free:
                    continue
                for p in (entry.sidecar_path, entry.engine_path):  # sidecar first: never a loadable half
                    with contextlib.suppress(OSError):
                        if p.is_file():
                            p.unlink()
                removed.append(entry.key)
        if removed:
            log.info(
                "evicted %d engine(s), keeping %d pinned and the %d most recently used others",
                len(removed),
                len(pinned),
                keep,
            )
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

    def cached_size(
        self, backend: Backend, bundle: ModelBundle, options: BuildOptions, device: DeviceIdentity
    ) -> int | None:
        """The size of this bundle's cached engine (from its sidecar), None when not cached: what the
        service's memory budget counts before loading anything."""
        recipe = str(getattr(backend, "build_recipe", ""))
        key = engine_key(bundle.sha256, backend.name, backend.version(), device, options, recipe)
        _, sidecar = self._paths(key.digest, backend.engine_suffix)
        meta = self._read_sidecar(sidecar) if sidecar.exists() else None
        size = meta.get("size") if meta else None
        return size if isinstance(size, int) else None

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
        self.repair()
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
            if why != MISSING:
                with self.lock(key.digest):
                    data, why = self.check(key.digest, suffix)  # re-check: a writer may have just finished
                    if data is None and why.startswith(INCOMPLETE):
                        self._discard(key.digest, suffix, why)
                    elif data is None and why != MISSING:
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
