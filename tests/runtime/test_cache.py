from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BuildOptions
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import ModelBundle
from edge_runtime.cache import EngineCache, engine_key
from edge_runtime.device import device_identity
from edge_runtime.errors import CacheError, EngineBuildError
from tests.runtime.conftest import FIXTURES, sample_feeds, write_tiny_bundle

PROCS = FIXTURES / "procs"
REPO = Path(__file__).resolve().parents[2]


class CountingBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, counting builds; its version can be faked to simulate an upgrade."""

    def __init__(self, version: str | None = None) -> None:
        super().__init__()
        self.builds = 0
        self._version = version

    def version(self) -> str:
        return self._version or super().version()

    def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
        self.builds += 1
        return super().build(bundle, options)


@pytest.fixture
def bundle(tiny_bundle: Path) -> ModelBundle:
    return ModelBundle.load(tiny_bundle)


def opts(bundle: ModelBundle) -> BuildOptions:
    return BuildOptions(batch=bundle.manifest.batch)


def test_miss_then_hit_and_same_outputs(bundle: ModelBundle, tmp_path: Path) -> None:
    import onnxruntime as ort

    backend, dev = CountingBackend(), device_identity()
    first = EngineCache(tmp_path).open(backend, bundle, opts(bundle), dev)
    second = EngineCache(tmp_path).open(backend, bundle, opts(bundle), dev)
    assert (first.hit, second.hit, backend.builds) == (False, True, 1)
    feeds = sample_feeds(3)
    expected = ort.InferenceSession(str(bundle.model_path)).run(["action"], feeds)[0]
    np.testing.assert_allclose(second.engine.infer(feeds)["action"], expected, rtol=1e-5, atol=1e-5)
    # Layout: a plain engine file plus a JSON sidecar that records the key's parts.
    meta = json.loads((tmp_path / "engines" / f"{second.key.digest}.json").read_text())
    assert meta["parts"]["bundle_sha256"] == bundle.sha256
    assert meta["size"] == second.path.stat().st_size
    assert second.path.read_bytes()[:4] != b'{"ke'  # no header prepended


def test_backend_upgrade_misses(bundle: ModelBundle, tmp_path: Path) -> None:
    dev = device_identity()
    old = EngineCache(tmp_path).open(CountingBackend("1.17.0"), bundle, opts(bundle), dev)
    upgraded = CountingBackend("1.18.0")
    new = EngineCache(tmp_path).open(upgraded, bundle, opts(bundle), dev)
    assert not new.hit and upgraded.builds == 1 and new.key.digest != old.key.digest


def test_l4t_upgrade_misses(bundle: ModelBundle, tmp_path: Path, fake_root: Path) -> None:
    r36 = device_identity(fake_root)
    (fake_root / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n"
    )
    r363 = device_identity(fake_root)
    assert r36.l4t == "36.4.0" and r363.l4t == "36.3.0"
    backend = CountingBackend()
    EngineCache(tmp_path).open(backend, bundle, opts(bundle), r36)
    assert not EngineCache(tmp_path).open(backend, bundle, opts(bundle), r363).hit
    assert backend.builds == 2


def test_key_parts_change_key(bundle: ModelBundle) -> None:
    dev = device_identity()
    base = engine_key(bundle.sha256, "onnxruntime", "1", dev, opts(bundle))
    for changed in (
        engine_key("0" * 64, "onnxruntime", "1", dev, opts(bundle)),
        engine_key(bundle.sha256, "onnxruntime", "1", dataclasses.replace(dev, gpu="Orin"), opts(bundle)),
        engine_key(
            bundle.sha256, "onnxruntime", "1", dev, dataclasses.replace(opts(bundle), precision="fp16")
        ),
    ):
        assert changed.digest != base.digest
    assert engine_key(bundle.sha256, "onnxruntime", "1", dev, opts(bundle)) == base  # deterministic


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign_sidecar", "garbage_sidecar", "unloadable"])
def test_bad_entry_is_quarantined_and_rebuilt(bundle: ModelBundle, tmp_path: Path, damage: str) -> None:
    backend, dev = CountingBackend(), device_identity()
    first = EngineCache(tmp_path).open(backend, bundle, opts(bundle), dev)
    sidecar = tmp_path / "engines" / f"{first.key.digest}.json"
    data = first.path.read_bytes()
    if damage == "flip":
        first.path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "truncate":
        first.path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign_sidecar":
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "key": "f" * 64}))
    elif damage == "garbage_sidecar":
        sidecar.write_text("{not json")
    else:  # checksum fine, but the backend cannot load it
        junk = b"not an onnx model"
        first.path.write_bytes(junk)
        meta = json.loads(sidecar.read_text())
        import hashlib

        sidecar.write_text(
            json.dumps({**meta, "size": len(junk), "sha256": hashlib.sha256(junk).hexdigest()})
        )
    again = EngineCache(tmp_path).open(backend, bundle, opts(bundle), dev)
    assert not again.hit and backend.builds == 2
    assert again.engine.infer(sample_feeds())["action"].shape == (1, 7)
    assert any((tmp_path / "quarantine").iterdir())
    assert EngineCache(tmp_path).verify() == [{"key": again.key.digest, "ok": True, "problem": None}]


def test_verify_reports_corruption(bundle: ModelBundle, tmp_path: Path) -> None:
    first = EngineCache(tmp_path).open(CountingBackend(), bundle, opts(bundle), device_identity())
    first.path.write_bytes(first.path.read_bytes()[:-10])
    cache = EngineCache(tmp_path)
    report = cache.verify(quarantine=True)
    assert report[0]["ok"] is False and "truncated" in report[0]["problem"]
    assert cache.entries() == []


def test_no_space_left_keeps_old_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = device_identity()
    old_bundle = ModelBundle.load(write_tiny_bundle(tmp_path / "old", seed=1))
    new_bundle = ModelBundle.load(write_tiny_bundle(tmp_path / "new", seed=2))
    cache_dir = tmp_path / "cache"
    old = EngineCache(cache_dir).open(CountingBackend(), old_bundle, opts(old_bundle), dev)
    before = sorted(p.name for p in (cache_dir / "engines").iterdir())

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CacheError, match="No space left"):
        EngineCache(cache_dir).open(CountingBackend(), new_bundle, opts(new_bundle), dev)
    monkeypatch.undo()
    assert sorted(p.name for p in (cache_dir / "engines").iterdir()) == before  # temp removed, nothing new
    assert EngineCache(cache_dir).open(CountingBackend(), old_bundle, opts(old_bundle), dev).hit
    assert old.key.digest in before[0]


def test_build_failure_leaves_cache_as_it_was(bundle: ModelBundle, tmp_path: Path) -> None:
    class Broken(CountingBackend):
        def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
            raise EngineBuildError("The build failed on purpose.")

    with pytest.raises(EngineBuildError):
        EngineCache(tmp_path).open(Broken(), bundle, opts(bundle), device_identity())
    assert list((tmp_path / "engines").iterdir()) == []


def test_unwritable_cache_dir_is_a_clear_error(bundle: ModelBundle, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="not writable"):
        EngineCache(blocker / "cache").open(CountingBackend(), bundle, opts(bundle), device_identity())


def test_eviction_keeps_newest(tmp_path: Path) -> None:
    dev = device_identity()
    cache_dir = tmp_path / "cache"
    keys = []
    for seed in range(4):
        b = ModelBundle.load(write_tiny_bundle(tmp_path / f"b{seed}", seed=seed))
        keys.append(EngineCache(cache_dir, keep=2).open(CountingBackend(), b, opts(b), dev).key.digest)
        time.sleep(0.01)
    remaining = [e.key for e in EngineCache(cache_dir).entries()]
    assert remaining == [keys[3], keys[2]]
    assert len(list((cache_dir / "engines").glob("*.ort.onnx"))) == 2


def _child(bundle: Path, cache: Path, mode: str, counter: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, str(PROCS / "cache_builder.py"), str(bundle), str(cache), mode, str(counter)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_build_once(tiny_bundle: Path, tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    procs = [_child(tiny_bundle, tmp_path / "cache", "count", counter) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(o["hit"] for o in outs) == [False, True]
    assert outs[0]["key"] == outs[1]["key"]


def test_killed_mid_write_next_start_rebuilds(tiny_bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "writing"
    cache = tmp_path / "cache"
    proc = _child(tiny_bundle, cache, "hang-write", marker)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "child never reached the engine write"
        time.sleep(0.05)
    assert list((cache / "engines").glob(".*.tmp")), "expected a temp file mid-write"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    bundle = ModelBundle.load(tiny_bundle)
    backend = CountingBackend()
    result = EngineCache(cache).open(backend, bundle, opts(bundle), device_identity())
    assert not result.hit and backend.builds == 1
    assert list((cache / "engines").glob(".*.tmp")) == []
    assert result.engine.infer(sample_feeds())["action"].shape == (1, 7)
    assert EngineCache(cache).open(backend, bundle, opts(bundle), device_identity()).hit


def test_long_build_reports_progress_with_elapsed_time(bundle: ModelBundle, tmp_path: Path) -> None:
    class Slow(CountingBackend):
        def build(self, bundle: ModelBundle, options: BuildOptions) -> bytes:
            time.sleep(0.35)
            return super().build(bundle, options)

    lines: list[str] = []
    EngineCache(tmp_path).open(
        Slow(), bundle, opts(bundle), device_identity(), progress=lines.append, progress_every_s=0.1
    )
    assert lines[0].startswith("building onnxruntime engine")
    assert any(line.startswith("still building") and "s elapsed" in line for line in lines)
    assert lines[-1].startswith("built onnxruntime engine in")


class FlakyLoadBackend(CountingBackend):
    """Loads fail for a reason outside the engine (out of GPU memory, no CUDA stream) a given number of times."""

    def __init__(self, transient_failures: int) -> None:
        super().__init__()
        self.transient_failures = transient_failures
        self.loads = 0

    def load(self, engine: bytes, bundle: ModelBundle, options: BuildOptions):  # type: ignore[no-untyped-def]
        from edge_runtime.errors import EngineLoadTransient

        self.loads += 1
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise EngineLoadTransient("CUDA call cudaStreamCreate failed (cudaErrorMemoryAllocation).")
        return super().load(engine, bundle, options)


def test_transient_load_failure_keeps_the_engine(bundle: ModelBundle, tmp_path: Path) -> None:
    """Out of memory while loading a good engine: no quarantine, no rebuild; the next start loads it."""
    from edge_runtime.errors import EngineLoadTransient

    dev = device_identity()
    built = EngineCache(tmp_path).open(CountingBackend(), bundle, opts(bundle), dev)
    flaky = FlakyLoadBackend(transient_failures=1)
    with pytest.raises(EngineLoadTransient, match="cudaErrorMemoryAllocation"):
        EngineCache(tmp_path).open(flaky, bundle, opts(bundle), dev)
    assert flaky.builds == 0 and not any((tmp_path / "quarantine").iterdir())
    assert built.path.is_file()
    again = EngineCache(tmp_path).open(flaky, bundle, opts(bundle), dev)
    assert again.hit and flaky.builds == 0 and again.key == built.key


def test_build_recipe_change_misses(bundle: ModelBundle, tmp_path: Path) -> None:
    """Same library version, new build flags: engines built the old way are not loaded."""
    dev = device_identity()
    old_backend = CountingBackend("10.3.0")
    old = EngineCache(tmp_path).open(old_backend, bundle, opts(bundle), dev)
    new_backend = CountingBackend("10.3.0")
    new_backend.build_recipe = "trt-2"  # type: ignore[attr-defined]
    new = EngineCache(tmp_path).open(new_backend, bundle, opts(bundle), dev)
    assert not new.hit and new_backend.builds == 1
    assert new.key.parts["build_recipe"] == "trt-2" and old.key.parts["build_recipe"] == ""
    assert engine_key(bundle.sha256, "tensorrt", "10.3.0", dev, opts(bundle), "trt-2") != engine_key(
        bundle.sha256, "tensorrt", "10.3.0", dev, opts(bundle), "trt-1"
    )


def test_atomic_write_temp_names_do_not_collide_within_one_pid(tmp_path: Path) -> None:
    """Two writers with the same PID (two containers are both PID 1) must not share one temp file."""
    import threading

    from edge_runtime.cache import atomic_write

    target = tmp_path / "timing.cache"
    payloads = [bytes([i]) * (256 << 10) for i in (1, 2)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                atomic_write(target, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads  # whole, never a mix
    assert list(tmp_path.glob(".*.tmp")) == []


def test_shared_file_lock_times_out_with_one_sentence(tmp_path: Path) -> None:
    from filelock import FileLock

    from edge_runtime.cache import shared_file_lock

    target = tmp_path / "t.cache"
    holder = FileLock(str(target) + ".lock", thread_local=False)
    holder.acquire()
    try:
        with (
            pytest.raises(CacheError, match=r"Timed out after 0 s waiting for the lock on t\.cache"),
            shared_file_lock(target, timeout=0.2),
        ):
            pass
    finally:
        holder.release()
    with shared_file_lock(target, timeout=1):
        pass
