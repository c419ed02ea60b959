"""Engine-cache faults made for real: a crash loop of real processes, processes killed with SIGKILL mid-write,
a cache volume that is actually full (a small tmpfs mounted for the test), and releases a robot keeps.

The full-disk tests mount a tmpfs, so they need root (with CAP_SYS_ADMIN): elsewhere they skip, and under
CI=true they fail (``tests.support.need``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench._serve import ServiceProcess, free_port

from edge_runtime.backends import BuildOptions
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import ModelBundle
from edge_runtime.cache import EngineCache
from edge_runtime.device import device_identity
from edge_runtime.errors import CacheError, EdgeError
from tests.runtime.conftest import FIXTURES, sample_feeds, write_tiny_bundle
from tests.support import need

PROCS = FIXTURES / "procs"
REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)]),
    "PYTHONUNBUFFERED": "1",
}


class CountingBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, counting builds."""

    def __init__(self) -> None:
        super().__init__()
        self.builds = 0

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        self.builds += 1
        return super().build(bundle, options)


class UnloadableBackend(OnnxRuntimeBackend):
    """Builds bytes ONNX Runtime refuses to load; ``distinct`` makes every build's bytes differ (as TensorRT
    builds do), otherwise every build gives the same bytes."""

    def __init__(self, distinct: bool = False, size: int = 3000) -> None:
        super().__init__()
        self.distinct = distinct
        self.size = size
        self.builds = 0

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        self.builds += 1
        head = f"unloadable engine {self.builds if self.distinct else 0}\n".encode()
        return (head * (self.size // len(head) + 1))[: self.size]


def opts(bundle: ModelBundle) -> BuildOptions:
    return BuildOptions(batch=bundle.manifest.batch)


def bundles(root: Path, n: int, first_seed: int = 10) -> list[ModelBundle]:
    """``n`` bundles that differ from each other and from ``tiny_bundle`` (seed 0), so their keys differ."""
    return [ModelBundle.load(write_tiny_bundle(root / f"b{i}", seed=first_seed + i)) for i in range(n)]


def quarantine_files(cache: Path) -> list[Path]:
    return (
        [p for p in (cache / "quarantine").rglob("*") if p.is_file()]
        if (cache / "quarantine").is_dir()
        else []
    )


def _child(bundle: Path, cache: Path, mode: str, counter: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROCS / "cache_builder.py"), str(bundle), str(cache), mode, str(counter)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _kill_when_writing(proc: subprocess.Popen[str], marker: Path) -> None:
    """Wait until the child is blocked inside its write (it touches ``marker``), then SIGKILL it."""
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "child never reached the write"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


# -- a small, real volume -----------------------------------------------------------------------------------
@contextlib.contextmanager
def small_volume(where: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` KiB mounted at ``where`` for the test, unmounted after it."""
    need(os.geteuid() == 0, "root, to mount a small tmpfs for the full-disk tests")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    need(r.returncode == 0, f"mount -t tmpfs works here ({r.stderr.strip()})")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(volume: Path) -> Path:
    """Take every free block of ``volume`` with one file; returns it."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    st = os.statvfs(volume)
    assert st.f_bavail == 0, "the volume still has free blocks"
    return filler


def listing(root: Path) -> list[str]:
    """Every file under ``root`` but the (empty) lock files."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


# -- quarantine: bounded, deduplicated --------------------------------------------------------------------
def test_crash_loop_quarantines_the_same_bad_bytes_once(tiny_bundle: Path, tmp_path: Path) -> None:
    """A service whose engine never loads restarts again and again: one quarantined copy, the repeats counted."""
    cache = tmp_path / "cache"
    starts = 5
    for _ in range(starts):
        proc = _child(tiny_bundle, cache, "unloadable", tmp_path / "unused")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "could not load" in err, err
    engines_in_quarantine = [p for p in quarantine_files(cache) if p.name.endswith(".ort.onnx")]
    assert len(engines_in_quarantine) == 1, listing(cache / "quarantine")
    records = EngineCache(cache).quarantined()
    assert len(records) == 1
    # The first start built and failed to load; each later start quarantined the same bytes again.
    assert records[0]["count"] == starts - 1 and records[0]["bytes_kept"] is True
    assert "could not load" in records[0]["reason"]
    assert records[0]["size"] == engines_in_quarantine[0].stat().st_size


def test_quarantine_keeps_only_the_newest_few_entries(bundle_dir: Path, tmp_path: Path) -> None:
    """Distinct bad bytes every restart (TensorRT builds differ byte for byte): the newest three stay."""
    bundle = ModelBundle.load(bundle_dir)
    cache = tmp_path / "cache"
    backend = UnloadableBackend(distinct=True)
    for _ in range(7):
        with pytest.raises(EdgeError, match="could not load"):
            EngineCache(cache).open(backend, bundle, opts(bundle), device_identity())
    bad = [p for p in quarantine_files(cache) if p.read_bytes().startswith(b"unloadable engine")]
    assert len(bad) == 3, listing(cache / "quarantine")
    records = EngineCache(cache).quarantined()
    assert [r["count"] for r in records] == [1, 1, 1]
    newest = [f"unloadable engine {n}\n" for n in (6, 5, 4)]  # build 7 is the one still in engines/
    assert [Path(r["files"][0]).read_text()[: len(newest[0])] for r in records] == newest
    assert all("could not load" in r["reason"] for r in records)


def test_quarantine_stays_under_its_byte_bound(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = ModelBundle.load(bundle_dir)
    cache = tmp_path / "cache"
    backend = UnloadableBackend(distinct=True, size=10_000)
    for _ in range(4):
        with pytest.raises(EdgeError):
            EngineCache(cache, quarantine_keep=10, quarantine_max_bytes=25_000).open(
                backend, bundle, opts(bundle), device_identity()
            )
    records = EngineCache(cache).quarantined()
    assert len(records) == 3  # the records stay (count bound), the oldest one's bytes went
    assert [r["bytes_kept"] for r in records] == [True, True, False]
    assert sum(p.stat().st_size for p in quarantine_files(cache) if p.name.endswith(".ort.onnx")) <= 25_000


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle", seed=5)


# -- a full volume, for real ------------------------------------------------------------------------------
def test_build_on_a_full_volume_leaves_the_cache_intact(tmp_path: Path) -> None:
    old_bundle, new_bundle = bundles(tmp_path, 2)
    dev = device_identity()
    with small_volume(tmp_path / "vol", 256) as vol:
        cache = vol / "cache"
        EngineCache(cache).open(CountingBackend(), old_bundle, opts(old_bundle), dev)
        fill(vol)
        before = listing(cache)
        with pytest.raises(CacheError) as caught:
            EngineCache(cache).open(CountingBackend(), new_bundle, opts(new_bundle), dev)
        sentence = str(caught.value)
        assert sentence.startswith("No space left on the device while writing") and sentence.count(". ") == 0
        assert listing(cache) == before  # no partial engine, no temp file, nothing moved
        backend = CountingBackend()
        again = EngineCache(cache).open(
            backend, old_bundle, opts(old_bundle), dev
        )  # still on the full volume
        assert again.hit and backend.builds == 0
        assert again.engine.infer(sample_feeds())["action"].shape == (1, 7)


def test_quarantine_on_a_full_volume_frees_the_bad_bytes_and_rebuilds(tmp_path: Path) -> None:
    """No room on the volume: the bad entry is dropped, not moved aside, so the rebuild fits."""
    (bundle,) = bundles(tmp_path, 1)
    dev = device_identity()
    with small_volume(tmp_path / "vol", 256) as vol:
        cache = vol / "cache"
        first = EngineCache(cache).open(CountingBackend(), bundle, opts(bundle), dev)
        fill(vol)
        data = bytearray(first.path.read_bytes())
        data[100] ^= 0xFF
        with open(first.path, "r+b") as f:  # in place: a bit flip takes no block
            f.write(bytes(data))
        backend = CountingBackend()
        again = EngineCache(cache).open(backend, bundle, opts(bundle), dev)
        assert not again.hit and backend.builds == 1
        assert again.engine.infer(sample_feeds())["action"].shape == (1, 7)
        assert quarantine_files(cache) == []  # nothing kept where nothing fits
        assert EngineCache(cache).verify() == [{"key": again.key.digest, "ok": True, "problem": None}]


def _serve_once(bundle: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "serve",
            "--bundle",
            str(bundle),
            "--cache",
            str(cache),
            "--backend",
            "onnxruntime",
            "--port",
            str(free_port()),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_service_on_a_full_volume_without_its_engine_exits_with_one_sentence(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    with small_volume(tmp_path / "vol", 128) as vol:
        cache = vol / "cache"
        EngineCache(cache).prepare()
        fill(vol)
        r = _serve_once(tiny_bundle, cache)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: No space left on the device while writing"), r.stderr
        assert "existing engines are intact" in last and "Traceback" not in r.stderr
        assert [p.name for p in (cache / "engines").iterdir()] == []


def test_service_on_a_full_volume_with_its_engine_serves(tiny_bundle: Path, tmp_path: Path) -> None:
    with small_volume(tmp_path / "vol", 128) as vol:
        cache = vol / "cache"
        bundle = ModelBundle.load(tiny_bundle)
        EngineCache(cache).open(OnnxRuntimeBackend(), bundle, opts(bundle), device_identity())
        fill(vol)
        with ServiceProcess(tiny_bundle, cache, "onnxruntime", env=ENV, merge_output=True) as svc:
            svc.wait_ready(timeout_s=120)
            assert svc.startup["cache_hit"] is True


def test_service_on_a_full_volume_with_a_corrupt_engine_rebuilds_and_serves(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    with small_volume(tmp_path / "vol", 128) as vol:
        cache = vol / "cache"
        bundle = ModelBundle.load(tiny_bundle)
        first = EngineCache(cache).open(OnnxRuntimeBackend(), bundle, opts(bundle), device_identity())
        fill(vol)
        with open(first.path, "r+b") as f:
            f.write(b"\xff" * 64)
        with ServiceProcess(tiny_bundle, cache, "onnxruntime", env=ENV, merge_output=True) as svc:
            svc.wait_ready(timeout_s=120)
            assert svc.startup["cache_hit"] is False


def test_engine_build_on_a_full_volume(tiny_bundle: Path, tmp_path: Path) -> None:
    """``edge-runtime engine build`` (the rollout's pre-build): one sentence and exit 2 where the engine cannot
    be written; a cache hit whose pin cannot be written still succeeds (a rollout must not call it bad)."""
    (other,) = bundles(tmp_path, 1)

    def build(bundle: Path, cache: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_runtime",
                "engine",
                "build",
                "--bundle",
                str(bundle),
                "--cache",
                str(cache),
                "--backend",
                "onnxruntime",
                "--pin",
                "1.0.0",
                "--json",
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with small_volume(tmp_path / "vol", 128) as vol:
        cache = vol / "cache"
        EngineCache(cache).open(OnnxRuntimeBackend(), other, opts(other), device_identity())
        fill(vol)
        r = build(tiny_bundle, cache)
        assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: No space left"), r.stderr
        assert "Traceback" not in r.stderr
        r = build(other.path, cache)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["hit"] is True and json.loads(r.stdout)["pin"] is None
        assert "warning: the engine was not pinned as 1.0.0: No space left" in r.stderr


# -- SIGKILL mid-write: the next start repairs ------------------------------------------------------------
def test_killed_between_engine_and_sidecar_next_start_repairs_without_quarantine(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "writing"
    _kill_when_writing(_child(tiny_bundle, cache, "hang-sidecar", marker), marker)
    names = [p.name for p in (cache / "engines").iterdir()]
    assert any(n.endswith(".ort.onnx") and not n.startswith(".") for n in names), names  # engine in place
    assert not any(n.endswith(".json") for n in names), names  # its sidecar never landed
    bundle = ModelBundle.load(tiny_bundle)
    backend = CountingBackend()
    result = EngineCache(cache).open(backend, bundle, opts(bundle), device_identity())
    assert not result.hit and backend.builds == 1
    assert quarantine_files(cache) == []  # an interrupted write is not evidence of a bad engine
    assert sorted(p.name for p in (cache / "engines").iterdir()) == sorted(
        [result.path.name, f"{result.key.digest}.json"]
    )


def test_leftover_of_a_killed_write_is_removed_by_the_next_start_of_any_engine(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """The killed release is never started again (rolled away): its half-written engine must not stay."""
    cache, marker = tmp_path / "cache", tmp_path / "writing"
    _kill_when_writing(_child(tiny_bundle, cache, "hang-write", marker), marker)
    assert list((cache / "engines").glob(".*.tmp"))
    (other,) = bundles(tmp_path / "other", 1)
    result = EngineCache(cache).open(CountingBackend(), other, opts(other), device_identity())
    assert sorted(p.name for p in (cache / "engines").iterdir()) == sorted(
        [result.path.name, f"{result.key.digest}.json"]
    )


def test_leftover_of_a_killed_timing_cache_write_is_removed_at_start(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "writing"
    _kill_when_writing(_child(tiny_bundle, cache, "hang-timing", marker), marker)
    assert list((cache / "timing").glob(".*.tmp"))
    bundle = ModelBundle.load(tiny_bundle)
    EngineCache(cache).open(CountingBackend(), bundle, opts(bundle), device_identity())
    assert list((cache / "timing").glob(".*.tmp")) == []


def test_killed_mid_quarantine_next_start_repairs(tiny_bundle: Path, tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "moving"
    bundle = ModelBundle.load(tiny_bundle)
    first = EngineCache(cache).open(CountingBackend(), bundle, opts(bundle), device_identity())
    first.path.write_bytes(b"corrupt")
    _kill_when_writing(_child(tiny_bundle, cache, "hang-quarantine", marker), marker)
    assert [p.name for p in (cache / "engines").iterdir()] == [f"{first.key.digest}.json"]  # half moved
    backend = CountingBackend()
    again = EngineCache(cache).open(backend, bundle, opts(bundle), device_identity())
    assert not again.hit and backend.builds == 1
    assert quarantine_files(cache) == [] and list((cache / "quarantine").iterdir()) == []
    assert EngineCache(cache).verify() == [{"key": again.key.digest, "ok": True, "problem": None}]


def test_a_live_writer_keeps_its_temp_file(tiny_bundle: Path, tmp_path: Path) -> None:
    """The start-up repair must not take the temp file of a build running in another container."""
    cache, marker = tmp_path / "cache", tmp_path / "writing"
    proc = _child(tiny_bundle, cache, "hang-write", marker)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        temps = list((cache / "engines").glob(".*.tmp"))
        (other,) = bundles(tmp_path / "other", 1)
        EngineCache(cache).open(CountingBackend(), other, opts(other), device_identity())
        assert temps and all(t.exists() for t in temps)
    finally:
        proc.kill()
        proc.wait(timeout=10)


# -- releases a robot keeps: pins ----------------------------------------------------------------------------
def test_pinned_releases_survive_failed_prebuilds_and_the_rollback_hits(tmp_path: Path) -> None:
    """current (1.1.0) and previous (1.0.0) are pinned; four later pre-builds of releases that then failed
    their gate must not evict either, so rolling back loads instead of rebuilding."""
    b = bundles(tmp_path, 6)
    dev = device_identity()
    cache = tmp_path / "cache"
    for release, bundle in (("1.0.0", b[0]), ("1.1.0", b[1])):
        built = EngineCache(cache).open(CountingBackend(), bundle, opts(bundle), dev)
        EngineCache(cache).pin(release, built.key.digest)
    for bundle in b[2:]:
        EngineCache(cache).open(CountingBackend(), bundle, opts(bundle), dev)
        time.sleep(0.01)
    for bundle in (b[1], b[0]):  # the service of 1.1.0 is still running; then a rollback to 1.0.0
        backend = CountingBackend()
        assert EngineCache(cache).open(backend, bundle, opts(bundle), dev).hit and backend.builds == 0
    assert len(EngineCache(cache).entries()) == 2 + 3  # the pinned two and the newest three others


def test_prune_drops_the_pins_of_releases_no_longer_kept(tmp_path: Path) -> None:
    b = bundles(tmp_path, 5)
    dev = device_identity()
    cache = EngineCache(tmp_path / "cache", keep=1)
    keys = {}
    for i, bundle in enumerate(b[:3]):
        keys[f"1.{i}.0"] = cache.open(CountingBackend(), bundle, opts(bundle), dev).key.digest
        cache.pin(f"1.{i}.0", keys[f"1.{i}.0"])
    assert cache.pins() == {name: [key] for name, key in keys.items()}
    dropped, evicted = cache.prune(keep_pins={"1.1.0", "1.2.0"})
    assert dropped == ["1.0.0"] and evicted == []  # 1.0.0's engine is the one unpinned entry kept
    for bundle in b[3:]:
        cache.open(CountingBackend(), bundle, opts(bundle), dev)
        time.sleep(0.01)
    present = {e.key for e in cache.entries()}
    assert keys["1.0.0"] not in present and {keys["1.1.0"], keys["1.2.0"]} <= present
    assert cache.unpin(["1.1.0", "9.9.9"]) == ["1.1.0"]
    assert set(cache.pins()) == {"1.2.0"}


def test_eviction_keeps_the_recently_used_unpinned_entries(tmp_path: Path) -> None:
    b = bundles(tmp_path, 3)
    dev = device_identity()
    cache = EngineCache(tmp_path / "cache", keep=2)
    first = cache.open(CountingBackend(), b[0], opts(b[0]), dev)
    time.sleep(0.01)
    cache.open(CountingBackend(), b[1], opts(b[1]), dev)
    time.sleep(0.01)
    assert cache.open(CountingBackend(), b[0], opts(b[0]), dev).hit  # used again: now the most recent
    time.sleep(0.01)
    third = cache.open(CountingBackend(), b[2], opts(b[2]), dev)
    assert {e.key for e in cache.entries()} == {first.key.digest, third.key.digest}


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 200, "v 1", "1.0.0;rm"])
def test_pin_names_are_checked(tmp_path: Path, name: str) -> None:
    with pytest.raises(CacheError, match="is not a valid pin name"):
        EngineCache(tmp_path).pin(name, "a" * 64)
    assert not (tmp_path / "pins").exists() or list((tmp_path / "pins").iterdir()) == []


def test_an_unreadable_pin_protects_nothing_and_is_listed(tmp_path: Path) -> None:
    b = bundles(tmp_path, 2)
    cache = EngineCache(tmp_path / "cache")
    kept, other = (cache.open(CountingBackend(), x, opts(x), device_identity()).key.digest for x in b)
    cache.pin("1.0.0", kept)
    (tmp_path / "cache" / "pins" / "1.1.0").write_text("{not json")
    assert cache.pins() == {"1.0.0": [kept], "1.1.0": []}
    assert cache.evict(keep=0) == [other]
    assert [e.key for e in cache.entries()] == [kept]
