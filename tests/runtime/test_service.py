from __future__ import annotations

import bz2
import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import httpx
import numpy as np
import pytest
from bench._serve import ServiceProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edge_runtime.service import NPZ, InferenceService, ServiceConfig, create_app
from edge_runtime.thermal import ThermalPolicy
from tests.runtime.conftest import FIXTURES, make_service, sample_feeds
from tests.runtime.test_serve_cli import ENV


def _reference(bundle: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx")).run(["action"], feeds)[0]


def _npz(feeds: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **feeds)  # type: ignore[arg-type]
    return buf.getvalue()


def test_json_infer_matches_onnxruntime(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(2)
    r = client.post("/v1/infer", json={"inputs": {k: v.tolist() for k, v in feeds.items()}})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(np.array(body["outputs"]["action"]), _reference(tiny_bundle, feeds), atol=1e-5)
    assert body["latency_ms"] > 0


def test_npz_infer_roundtrip(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(3, seed=7)
    r = client.post("/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ, "Accept": NPZ})
    assert r.status_code == 200 and r.headers["content-type"].startswith(NPZ)
    with np.load(io.BytesIO(r.content)) as out:
        np.testing.assert_allclose(out["action"], _reference(tiny_bundle, feeds), atol=1e-5)


def test_json_ints_are_cast_to_model_dtype(client: TestClient) -> None:
    feeds = {"image": np.zeros((1, 3, 224, 224), dtype=np.int64).tolist(), "robot_state": [[1] * 48]}
    assert client.post("/v1/infer", json={"inputs": feeds}).status_code == 200


BAD_CASES = {
    "unknown input": (
        {"inputs": {**{k: v.tolist() for k, v in sample_feeds().items()}, "depth": [1]}},
        400,
        "Unknown input 'depth'",
    ),
    "missing input": ({"inputs": {"robot_state": [[0.0] * 48]}}, 400, "Missing input 'image'"),
    "wrong shape": (
        {"inputs": {"image": np.zeros((1, 3, 224, 224)).tolist(), "robot_state": [[0.0] * 47]}},
        400,
        "has shape [1, 47]",
    ),
    "non-numeric": (
        {"inputs": {"image": "cat", "robot_state": [[0.0] * 48]}},
        400,
        "not a rectangular array",
    ),
    "ragged": ({"inputs": {"image": [[1, 2], [3]], "robot_state": [[0.0] * 48]}}, 400, "not a rectangular"),
    "no inputs object": ({"outputs": {}}, 400, '"inputs" object'),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_json_inputs_are_4xx_with_a_sentence(client: TestClient, case: str) -> None:
    body, status, fragment = BAD_CASES[case]
    r = client.post("/v1/infer", json=body)
    assert r.status_code == status
    assert fragment in r.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_invalid_json_truncated_npz_wrong_dtype_media_type(client: TestClient) -> None:
    assert (
        client.post(
            "/v1/infer", content=b'{"inputs": {', headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    blob = _npz(sample_feeds())
    r = client.post("/v1/infer", content=blob[: len(blob) // 2], headers={"Content-Type": NPZ})
    assert r.status_code == 400 and "npz" in r.json()["error"]
    wrong = {k: v.astype(np.float64) for k, v in sample_feeds().items()}
    r = client.post("/v1/infer", content=_npz(wrong), headers={"Content-Type": NPZ})
    assert r.status_code == 400 and "dtype float64" in r.json()["error"]
    r = client.post("/v1/infer", content=_npz(sample_feeds(9)), headers={"Content-Type": NPZ})
    assert r.status_code == 400 and "outside the engine's profile 1..8" in r.json()["error"]
    r = client.post("/v1/infer", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.post("/v1/infer", content=b"0" * (17 << 20), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is checked
        for _ in range(17):
            yield b"0" * (1 << 20)

    r = client.post("/v1/infer", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(["image", "robot_state", "x"]), json_values, max_size=3).map(
            lambda d: json.dumps({"inputs": d}).encode()
        ),
    ),
    npz=st.booleans(),
)
def test_fuzzed_bodies_never_500(client: TestClient, body: bytes, npz: bool) -> None:
    r = client.post("/v1/infer", content=body, headers={"Content-Type": NPZ if npz else "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"].endswith(".")


def test_metrics_exposes_the_service(client: TestClient) -> None:
    client.post("/v1/infer", json={"inputs": {k: v.tolist() for k, v in sample_feeds().items()}})
    client.post("/v1/infer", json={"nope": 1})
    text = client.get("/metrics").text
    for name in (
        "edge_request_latency_seconds_bucket",
        'edge_requests_total{code="200"}',
        'edge_request_errors_total{reason="bad_json"}',
        'edge_engine_cache_total{result="miss"}',
        "edge_engine_build_seconds",
        "edge_temperature_celsius",
        'edge_thermal_state{edge_thermal_state="normal"} 1.0',
    ):
        assert name in text, name


def test_ready_and_health(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["backend"] == "onnxruntime"
    assert r.json()["startup"]["cache_hit"] is False
    assert client.get("/healthz").json()["status"] == "ok"


def test_not_ready_before_load(tiny_bundle: Path, tmp_path: Path) -> None:
    service = InferenceService(ServiceConfig(bundle=tiny_bundle, cache=tmp_path, backend="onnxruntime"))
    app = create_app(service, load_in_background=False)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def _write_temp(root: Path, celsius: float) -> None:
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text(f"{int(celsius * 1000)}\n")


def test_thermal_governor_in_service(tiny_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write_temp(root, 50)
    service = make_service(
        tiny_bundle,
        tmp_path / "cache",
        root,
        thermal=ThermalPolicy(soft_c=70, hard_c=85, degraded_max_batch=2),
    )
    feeds = sample_feeds(5)
    expected = _reference(tiny_bundle, feeds)
    with TestClient(create_app(service)) as c:

        def infer() -> object:
            return c.post("/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ, "Accept": NPZ})

        _write_temp(root, 75)
        service.poll_thermal()
        r = infer()  # degraded: batch 5 runs as 2+2+1, same answers
        assert r.status_code == 200 and service.thermal.state == "degraded"
        with np.load(io.BytesIO(r.content)) as out:
            np.testing.assert_allclose(out["action"], expected, atol=1e-5)
        _write_temp(root, 90)
        service.poll_thermal()
        r = infer()
        assert r.status_code == 503 and "too hot" in r.json()["error"]
        assert c.get("/readyz").status_code == 503
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["thermal"]["state"] == "critical"
        assert 'edge_thermal_state{edge_thermal_state="critical"} 1.0' in c.get("/metrics").text
        _write_temp(root, 80)  # below hard but above soft: still refused (hysteresis)
        service.poll_thermal()
        assert infer().status_code == 503
        _write_temp(root, 60)
        service.poll_thermal()
        assert infer().status_code == 200 and service.thermal.state == "normal"


def test_watchdog_trips_while_an_inference_overruns_and_clears_after(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    service = make_service(tiny_bundle, tmp_path / "cache", tmp_path / "none", deadline_ms=100)
    assert service.engine is not None
    real = service.engine.infer

    def slow(feeds):  # type: ignore[no-untyped-def]
        time.sleep(0.6)
        return real(feeds)

    service.engine.infer = slow  # type: ignore[method-assign]
    with TestClient(create_app(service)) as c:
        assert c.get("/healthz").status_code == 200
        seen: list[int] = []
        t = threading.Thread(
            target=lambda: c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        )
        t.start()
        while t.is_alive():
            seen.append(c.get("/healthz").status_code)
            time.sleep(0.02)
        assert 503 in seen and seen[0] == 200, seen  # unhealthy while it overran its deadline
        assert "edge_watchdog_trips_total 1.0" in c.get("/metrics").text
        deadline = time.monotonic() + 5  # it finished (slow, not hung): healthy again, nothing restarted
        while c.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/healthz").status_code == 200 and "edge_healthy 1.0" in c.get("/metrics").text


def test_build_failure_stops_the_server_with_a_sentence(tiny_bundle: Path, tmp_path: Path) -> None:
    import socket

    from edge_runtime.errors import EdgeError, EngineBuildError
    from edge_runtime.service import serve

    service = InferenceService(
        ServiceConfig(
            bundle=tiny_bundle, cache=tmp_path / "cache", backend="onnxruntime", device_root=tmp_path
        )
    )
    service.prepare()

    def broken(bundle: object, options: object) -> bytes:
        raise EngineBuildError("ONNX Runtime could not optimize model.onnx: broken on purpose.")

    service.backend.build = broken  # type: ignore[union-attr, method-assign]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EdgeError, match="could not optimize"):
        serve(service, port=port)
    assert service.health()[0] == 503 and list((tmp_path / "cache" / "engines").iterdir()) == []


def test_request_error_is_an_edge_error() -> None:
    from edge_runtime.errors import EdgeError
    from edge_runtime.service import RequestError

    assert issubclass(RequestError, EdgeError)


def test_inline_inference_mode_gives_the_same_answers(tiny_bundle: Path, tmp_path: Path) -> None:
    service = make_service(tiny_bundle, tmp_path / "cache", tmp_path / "none", inline_infer=True)
    feeds = sample_feeds(2, seed=9)
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ, "Accept": NPZ})
        assert r.status_code == 200
        with np.load(io.BytesIO(r.content)) as out:
            np.testing.assert_allclose(out["action"], _reference(tiny_bundle, feeds), atol=1e-5)
        assert c.post("/v1/infer", json={"inputs": {}}).status_code == 400


def test_backend_failure_is_a_500_sentence_and_service_stays_up(tiny_bundle: Path, tmp_path: Path) -> None:
    service = make_service(tiny_bundle, tmp_path / "cache", tmp_path / "none")
    assert service.engine is not None
    real = service.engine.infer
    calls = {"n": 0}

    def flaky(feeds):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(feeds)

    service.engine.infer = flaky  # type: ignore[method-assign]
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        assert (
            r.status_code == 500
            and r.json()["error"] == "Inference failed (RuntimeError); see the service log."
        )
        assert (
            c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ}).status_code
            == 200
        )
        assert c.get("/healthz").status_code == 200


# -- backend choice: a CPU fallback says why ---------------------------------------------------------------
def _tensorrt_refusal() -> str:
    """TensorRT's own sentence for why it cannot serve here (our machines: no TensorRT, or no GPU)."""
    from edge_runtime.backends.tensorrt import TensorRTBackend
    from edge_runtime.errors import BackendUnavailable

    try:
        TensorRTBackend().require()
    except BackendUnavailable as exc:
        return str(exc)
    pytest.skip("TensorRT is usable on this machine: auto takes it and nothing falls back")


def _backend_info(text: str) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        dict(s.labels)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edge_backend_info" and s.value == 1.0
    ]


def test_auto_falls_back_to_onnxruntime_and_says_why(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A robot whose image cannot reach TensorRT serves ONNX Runtime on the CPU under ``auto``, and says so
    in /readyz, /metrics and a WARNING at start, with TensorRT's own sentence (the fleet's gate reads it)."""
    from edge_runtime.service import REASON_LABEL_CHARS

    why = " ".join(_tensorrt_refusal().split())
    config = ServiceConfig(bundle=tiny_bundle, cache=tmp_path / "c", backend="auto", device_root=tmp_path)
    service = InferenceService(config)
    with caplog.at_level("WARNING", logger="edge_runtime.service"):
        service.prepare()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"backend auto fell back to onnxruntime on the CPU, TensorRT is not used: {why}"]
    service.load()
    with TestClient(create_app(service, load_in_background=False)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert (body["backend"], body["backend_requested"], body["fallback"]) == ("onnxruntime", "auto", why)
        info = _backend_info(c.get("/metrics").text)
        label = why[:REASON_LABEL_CHARS]
        assert info == [{"backend": "onnxruntime", "requested": "auto", "fallback": "true", "reason": label}]
        assert c.get("/v2/models/tiny-policy").json()["platform"] == "onnxruntime"
    service.close()


def test_an_asked_for_backend_is_no_fallback(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert (body["backend"], body["backend_requested"]) == ("onnxruntime", "onnxruntime")
    assert "fallback" not in body
    info = _backend_info(client.get("/metrics").text)
    assert info == [{"backend": "onnxruntime", "requested": "onnxruntime", "fallback": "false", "reason": ""}]


def test_fallback_reason_is_one_line_and_bounded_as_a_label(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT's sentence may span lines or run long: /readyz keeps it whole on one line, the metric label
    is cut to a bounded length."""
    from edge_runtime.backends.tensorrt import TensorRTBackend
    from edge_runtime.errors import BackendUnavailable
    from edge_runtime.service import REASON_LABEL_CHARS

    long = "TensorRT found no GPU;\n  was the container started with the NVIDIA runtime? " + "x" * 400

    def refuse(self: TensorRTBackend) -> None:
        raise BackendUnavailable(long)

    monkeypatch.setattr(TensorRTBackend, "require", refuse)
    config = ServiceConfig(bundle=tiny_bundle, cache=tmp_path / "c", backend="auto", device_root=tmp_path)
    service = InferenceService(config)
    service.prepare()
    one_line = " ".join(long.split())
    assert service.readiness()[1]["fallback"] == one_line
    from prometheus_client import generate_latest

    (info,) = _backend_info(generate_latest(service.registry).decode())
    assert info["reason"] == one_line[:REASON_LABEL_CHARS] and info["fallback"] == "true"


def test_auto_takes_tensorrt_where_it_is_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice only (TensorRT cannot run here: ``require`` is made to pass): no fallback is reported."""
    from edge_runtime.backends import select_backend
    from edge_runtime.backends.tensorrt import TensorRTBackend

    monkeypatch.setattr(TensorRTBackend, "require", lambda self: None)
    choice = select_backend("auto")
    assert choice.backend.name == "tensorrt" and choice.requested == "auto" and choice.fallback is None
    assert select_backend("onnxruntime").fallback is None


# -- crafted npz archives: decompression bombs and lying headers -------------------------------------------
MiB = 1 << 20


def npy_header(shape: tuple[int, ...], dtype: str = "<f4", fortran: bool = False) -> bytes:
    """The bytes ``np.save`` writes before the data: magic, version 1.0, header length, header dict."""
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


@dataclass(frozen=True)
class Member:
    """One zip member as it goes on the wire: compressed bytes, CRC and true size, and the size it declares."""

    name: str
    method: int
    data: bytes
    crc: int
    size: int
    declared: int | None = None  # the uncompressed size written in the headers (None: the true one)


def zip_archive(members: list[Member]) -> bytes:
    """A zip file written field by field, so a test can make its headers say what it wants (sizes of 4 GiB
    and more go in a zip64 extra field, as numpy's own writer does)."""
    out, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode()
        declared = m.size if m.declared is None else m.declared
        zip64 = max(declared, len(m.data)) >= 0xFFFFFFFF
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(m.data), declared)
        extra = struct.pack("<2H2Q", 1, 16, declared, len(m.data)) if zip64 else b""
        version = 45 if zip64 else 20
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", version, 0, m.method, 0, 0x21, m.crc, *sizes, len(name), len(extra)
        )
        out += name + extra + m.data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", version, version, 0, m.method, 0, 0x21, m.crc, *sizes, len(name),
            len(extra), 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += name + extra
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


@cache
def _deflated_zeros_block() -> bytes:
    """1 MiB of zeros as raw deflate blocks ending on a full flush: repeating it is a valid longer stream."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)


def _zeros_crc(prefix: bytes, n: int) -> int:
    crc = zlib.crc32(prefix)
    block = bytes(MiB)
    for _ in range(n // MiB):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(bytes(n % MiB), crc)


@lru_cache(maxsize=64)
def npy_member(
    name: str,
    shape: tuple[int, ...],
    dtype: str = "<f4",
    method: int = zipfile.ZIP_DEFLATED,
    declared: int | None = None,
) -> Member:
    """An ``.npy`` member of zeros with an honest header; deflated ~1000:1 (a 600 MB array is ~0.6 MB on the
    wire, built in milliseconds from a repeated block), bzip2 far more. ``declared`` makes the zip lie."""
    header = npy_header(shape, dtype)
    n = math.prod(shape) * np.dtype(dtype).itemsize
    if method == zipfile.ZIP_DEFLATED:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
        tail = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = head + _deflated_zeros_block() * (n // MiB) + tail.compress(bytes(n % MiB)) + tail.flush()
    elif method == zipfile.ZIP_STORED:
        data = header + bytes(n)
    elif method == zipfile.ZIP_BZIP2:
        bc = bz2.BZ2Compressor(9)
        parts = [bc.compress(header)]
        block = bytes(MiB)
        for _ in range(n // MiB):
            parts.append(bc.compress(block))
        data = b"".join([*parts, bc.compress(bytes(n % MiB)), bc.flush()])
    else:
        import lzma

        data = lzma.compress(header + bytes(n), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])
    crc = _zeros_crc(header, n) if n <= 1 << 30 else 0  # nothing may inflate that far to check it
    return Member(f"{name}.npy", method, data, crc, len(header) + n, declared)


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM): what the kernel's OOM killer would have seen."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_npz_bombs_are_refused_before_inflating(tiny_bundle: Path, tmp_path: Path) -> None:
    """A served process gets sub-MB npz bodies that inflate to hundreds of MB; its peak memory must not move."""
    bombs = {
        "deflate, honest header, 1000 images (602 MB)": zip_archive(
            [npy_member("image", (1000, 3, 224, 224)), npy_member("robot_state", (1000, 48))]
        ),
        "deflate, header says 1 image, zip says 602 KB, stream inflates to 301 MB": zip_archive(
            [
                Member(
                    "image.npy",
                    zipfile.ZIP_DEFLATED,
                    npy_member("image", (500, 3, 224, 224)).data,
                    0,
                    len(npy_header((1, 3, 224, 224))) + 602112,
                ),
                npy_member("robot_state", (1, 48)),
            ]
        ),
        "bzip2, 160 MB": zip_archive(
            [
                npy_member("image", (266, 3, 224, 224), method=zipfile.ZIP_BZIP2),
                npy_member("robot_state", (1, 48)),
            ]
        ),
    }
    with ServiceProcess(tiny_bundle, tmp_path / "cache", "onnxruntime", env=ENV) as svc:
        svc.wait_ready(timeout_s=60)
        base = _peak_rss(svc.proc.pid)
        for label, body in bombs.items():
            assert len(body) < MiB, label
            r = httpx.post(svc.url + "/v1/infer", content=body, headers={"Content-Type": NPZ}, timeout=120)
            assert 400 <= r.status_code < 500, (label, r.status_code, r.text)
            assert r.json()["error"].endswith("."), r.text
            grown = _peak_rss(svc.proc.pid) - base
            assert grown < 48 * MiB, f"{label}: the service's peak memory grew by {grown / MiB:.0f} MiB"
            print(
                f"\n{label}: {len(body) >> 10} KiB body, HTTP {r.status_code}, peak RSS +{grown / MiB:.1f} MiB"
            )
        assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200
        ok = httpx.post(
            svc.url + "/v1/infer",
            content=zip_archive([npy_member("image", (2, 3, 224, 224)), npy_member("robot_state", (2, 48))]),
            headers={"Content-Type": NPZ},
            timeout=30,
        )
        assert ok.status_code == 200 and len(ok.json()["outputs"]["action"]) == 2, ok.text


def _raw_npy(name: str, header_text: bytes) -> Member:
    """A stored .npy member whose header dict is the given text (padded as numpy pads it), then 192 bytes."""
    text = header_text + b" " * (-(len(header_text) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(192)
    return Member(f"{name}.npy", zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


NPZ_REFUSALS = {
    "bzip2 member": (
        [npy_member("image", (1, 3, 224, 224), method=zipfile.ZIP_BZIP2), npy_member("robot_state", (1, 48))],
        "compression",
    ),
    "lzma member": (
        [npy_member("image", (1, 3, 224, 224), method=zipfile.ZIP_LZMA), npy_member("robot_state", (1, 48))],
        "compression",
    ),
    "zip declares more than the header's shape": (
        [npy_member("image", (1, 3, 224, 224), declared=10**10), npy_member("robot_state", (1, 48))],
        "declares 10000000000 bytes",
    ),
    "zip declares less than the stream holds (zipfile stops there, CRC-32 fails)": (
        [npy_member("image", (1, 3, 224, 224), declared=1000), npy_member("robot_state", (1, 48))],
        "not a complete npz archive",
    ),
    "header's batch over the profile": (
        [npy_member("image", (9, 3, 224, 224)), npy_member("robot_state", (9, 48))],
        "outside the engine's profile 1..8",
    ),
    "member longer than its header's shape": (
        [
            Member(
                "image.npy",
                zipfile.ZIP_DEFLATED,
                npy_member("image", (2, 3, 224, 224)).data,
                npy_member("image", (2, 3, 224, 224)).crc,
                npy_member("image", (2, 3, 224, 224)).size,
            ),
            npy_member("robot_state", (1, 48)),
        ],
        "",
    ),
    "member shorter than its header's shape": (
        [
            Member(
                "image.npy",
                zipfile.ZIP_STORED,
                npy_header((1, 3, 224, 224)) + bytes(1000),
                zlib.crc32(npy_header((1, 3, 224, 224)) + bytes(1000)),
                len(npy_header((1, 3, 224, 224))) + 1000,
            ),
            npy_member("robot_state", (1, 48)),
        ],
        "",
    ),
    "damaged .npy header (unclosed tuple)": (
        [_raw_npy("robot_state", b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 48")],
        "does not parse",
    ),
    "damaged .npy header (NUL byte)": (
        [_raw_npy("robot_state", b"{'descr': '<f4', 'fort\x00ran_order': False, 'shape': (1, 48), }")],
        "does not parse",
    ),
    "same member twice": (
        [
            npy_member("robot_state", (1, 48)),
            npy_member("robot_state", (1, 48)),
            npy_member("image", (1, 3, 224, 224)),
        ],
        "",
    ),
    "object dtype": (
        [npy_member("image", (1, 3, 224, 224)), npy_member("robot_state", (1, 48), dtype="|O", method=0)],
        "dtype object",
    ),
}


@pytest.mark.parametrize("case", list(NPZ_REFUSALS))
def test_npz_archives_are_checked_before_inflating(client: TestClient, case: str) -> None:
    members, fragment = NPZ_REFUSALS[case]
    r = client.post("/v1/infer", content=zip_archive(members), headers={"Content-Type": NPZ})
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["error"] and r.json()["error"].endswith("."), r.text


def test_npz_fortran_order_and_savez_compressed_still_work(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(2, seed=12)
    buf = io.BytesIO()
    np.savez_compressed(buf, image=np.asfortranarray(feeds["image"]), robot_state=feeds["robot_state"])
    r = client.post("/v1/infer", content=buf.getvalue(), headers={"Content-Type": NPZ, "Accept": NPZ})
    assert r.status_code == 200, r.text
    with np.load(io.BytesIO(r.content)) as out:
        np.testing.assert_allclose(out["action"], _reference(tiny_bundle, feeds), atol=1e-5)


# -- JSON: NaN, out-of-range numbers, nesting, and decoding off the event loop ------------------------------
def _json_body(robot_state: str) -> bytes:
    image = json.dumps(np.zeros((1, 3, 224, 224)).tolist())
    return f'{{"inputs": {{"image": {image}, "robot_state": [[{robot_state}{", 0" * 47}]]}}}}'.encode()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("NaN", "NaN"), ("-Infinity", "Infinity"), ("1e39", "finite"), ("1e400", "finite")],
)
def test_json_nan_infinity_and_out_of_range_numbers_are_400(
    client: TestClient, value: str, fragment: str
) -> None:
    r = client.post("/v1/infer", content=_json_body(value), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"] and r.json()["error"].endswith(".")
    assert client.post("/v1/infer", content=_json_body("0.5")).status_code == 200


def test_non_finite_outputs_in_a_json_answer_are_422(client: TestClient) -> None:
    feeds = sample_feeds()
    feeds["robot_state"][0, 0] = np.nan  # binary inputs may carry NaN; JSON answers cannot
    r = client.post("/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ})
    assert r.status_code == 422 and "not finite" in r.json()["error"], r.text
    r = client.post("/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ, "Accept": NPZ})
    assert r.status_code == 200
    with np.load(io.BytesIO(r.content)) as out:
        assert np.isnan(out["action"]).all()


@pytest.mark.parametrize("depth", [2_000, 100_000])
@pytest.mark.parametrize("route", ["v1", "v2"])
def test_deeply_nested_json_is_400(client: TestClient, route: str, depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    if route == "v1":
        path, body = "/v1/infer", f'{{"inputs": {{"image": {nested}}}}}'
    else:
        path = "/v2/models/tiny-policy/infer"
        body = f'{{"inputs": [{{"name": "image", "shape": [1], "datatype": "FP32", "data": {nested}}}]}}'
    r = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"].endswith(".")
    assert client.get("/healthz").status_code == 200


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (any of its threads may have started them)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_health_answers_while_a_large_json_body_is_decoded(tiny_bundle: Path, tmp_path: Path) -> None:
    """CPython's json and numpy hold the GIL for a whole parse, so a thread would not help: a 33 MB body
    (2.5 s of parsing here) must still leave /healthz answering within a fraction of a second."""
    rng = np.random.default_rng(0)
    body = json.dumps(
        {
            "inputs": {
                "image": rng.random((12, 3, 224, 224)).tolist(),
                "robot_state": rng.random((12, 48)).tolist(),
            }
        }
    ).encode()
    with ServiceProcess(tiny_bundle, tmp_path / "cache", "onnxruntime", env=ENV) as svc:
        svc.wait_ready(timeout_s=60)
        result: dict[str, object] = {}

        def post_big() -> None:
            r = httpx.post(
                svc.url + "/v1/infer", content=body, headers={"Content-Type": "application/json"}, timeout=120
            )
            result.update(status=r.status_code, error=r.json().get("error"))

        big = threading.Thread(target=post_big)
        t0 = time.monotonic()
        big.start()
        waits: list[float] = []
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            while big.is_alive():
                t = time.monotonic()
                assert c.get("/healthz").status_code == 200
                waits.append(time.monotonic() - t)
                time.sleep(0.02)
            decoder_adj = [
                Path(f"/proc/{k}/oom_score_adj").read_text().strip() for k in _children(svc.proc.pid)
            ]
        big.join()
        took = time.monotonic() - t0
        assert result["status"] == 400 and "Batch size 12" in str(result["error"]), result  # decoded in full
        assert max(waits) < 0.5, (
            f"/healthz waited {max(waits):.2f} s while a {len(body) >> 20} MB body decoded"
        )
        assert len(waits) >= 10, (len(waits), took)
        print(
            f"\n{len(body) / 1e6:.0f} MB JSON decoded in {took:.2f} s; {len(waits)} /healthz calls, slowest {max(waits) * 1000:.0f} ms"
        )
        assert decoder_adj == ["1000"], decoder_adj  # the decoder goes first if memory runs out


def test_killed_json_decoder_is_a_sentence_and_comes_back(tiny_bundle: Path, tmp_path: Path) -> None:
    """The decoder process killed mid-parse (what the OOM killer does): that request gets a 4xx sentence,
    the service lives on, and the next large body starts a fresh decoder."""
    import signal

    rng = np.random.default_rng(1)
    big = json.dumps({"inputs": {"image": rng.random((12, 3, 224, 224)).tolist()}}).encode()
    with ServiceProcess(tiny_bundle, tmp_path / "cache", "onnxruntime", env=ENV) as svc:
        svc.wait_ready(timeout_s=60)
        result: dict[str, object] = {}
        t = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(
                    svc.url + "/v1/infer",
                    content=big,
                    headers={"Content-Type": "application/json"},
                    timeout=120,
                )
            )
        )
        t.start()
        deadline = time.monotonic() + 30
        while not _children(svc.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (worker,) = _children(svc.proc.pid)
        time.sleep(0.3)  # mid-parse
        os.kill(worker, signal.SIGKILL)
        t.join(timeout=60)
        r = result["r"]
        assert isinstance(r, httpx.Response) and r.status_code == 413, r
        assert "decoder" in r.json()["error"] and r.json()["error"].endswith(".")
        assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200
        feeds = sample_feeds(1, seed=3)
        again = httpx.post(
            svc.url + "/v1/infer", json={"inputs": {k: v.tolist() for k, v in feeds.items()}}, timeout=60
        )
        assert again.status_code == 200, again.text


# -- watchdog: a hung inference fails readiness, then the process exits for its restart policy -------------
def test_hung_inference_fails_readiness_refuses_work_then_asks_to_exit(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    service = make_service(tiny_bundle, tmp_path / "cache", tmp_path / "none", deadline_ms=100)
    service.config.hung_exit_s = 0.6
    exits: list[str] = []
    service.on_hung = exits.append  # serve() puts os._exit here; in process we record the call
    assert service.engine is not None
    real = service.engine.infer
    release = threading.Event()

    def hang(feeds):  # type: ignore[no-untyped-def]
        release.wait(30)
        return real(feeds)

    service.engine.infer = hang  # type: ignore[method-assign]
    with TestClient(create_app(service)) as c:
        stuck = threading.Thread(
            target=lambda: c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        )
        stuck.start()
        deadline = time.monotonic() + 5
        while c.get("/healthz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/healthz").status_code == 503
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "deadline" in ready.json()["reason"], ready.text  # Docker's check
        t = time.monotonic()
        refused = c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        assert refused.status_code == 503 and time.monotonic() - t < 1.0  # not queued behind the hung call
        assert "restart" in refused.json()["error"]
        while not exits and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(exits) == 1 and "hung" in exits[0] and exits[0].endswith("."), exits
        release.set()
        stuck.join(timeout=10)
        # The slow call came back before anything ended the process: the service recovers on its own.
        deadline = time.monotonic() + 5
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200
        assert "edge_watchdog_trips_total 1.0" in c.get("/metrics").text


def _healthcheck(port: str) -> subprocess.CompletedProcess[str]:
    """What Docker runs in the container, against the served process."""
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.healthcheck"],
        env={**ENV, "EDGE_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hung_engine_fails_the_health_check_exits_and_a_restart_serves(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A real served process whose engine hangs (tests/runtime/fixtures/procs/slow_serve.py): Docker's health
    check fails, the process exits with EXIT_HUNG, and the same command (what the restart policy runs)
    serves again from the cached engine. Prints the measured times for docs/runtime.md."""
    env = {
        **ENV,
        "EDGE_TEST_SLOW_S": "300",
        "EDGE_DEADLINE_MS": "500",
        "EDGE_HUNG_EXIT_S": "2",
        "EDGE_DRAIN_S": "1",
    }
    script = [str(FIXTURES / "procs" / "slow_serve.py")]
    cache = tmp_path / "cache"
    svc = ServiceProcess(tiny_bundle, cache, "onnxruntime", script=script, env=env, merge_output=True)
    with svc:
        svc.wait_ready(timeout_s=60)
        port = svc.url.rsplit(":", 1)[1]
        assert _healthcheck(port).returncode == 0
        feeds = sample_feeds()
        feeds["robot_state"][0, 0] = 42.0  # the fixture makes this call hang

        def post_hung() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    svc.url + "/v1/infer", content=_npz(feeds), headers={"Content-Type": NPZ}, timeout=60
                )

        threading.Thread(target=post_hung, daemon=True).start()
        t_hang = time.monotonic()
        time.sleep(0.8)  # past the 0.5 s deadline
        check = _healthcheck(port)
        assert check.returncode == 1 and "503" in check.stderr and "deadline" in check.stderr, check
        code = svc.proc.wait(timeout=20)
        from edge_runtime.service import EXIT_HUNG

        t_exit = time.monotonic() - t_hang
        log = svc.proc.stdout.read() if svc.proc.stdout else ""
        assert code == EXIT_HUNG, (code, log)
        assert "hung" in log and "Traceback" not in log, log
    with ServiceProcess(tiny_bundle, cache, "onnxruntime", env=ENV) as again:
        ready_s = again.wait_ready(timeout_s=60)
        assert again.startup["cache_hit"] is True
        r = httpx.post(
            again.url + "/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ}, timeout=30
        )
        assert r.status_code == 200
    print(
        f"\nwatchdog: hang → exit {t_exit:.2f} s (deadline 0.5 s + grace 2 s), restart → ready {ready_s:.2f} s"
    )


# -- thermal: a sensor that cannot be read while the device is critical -------------------------------------
def test_unreadable_sensor_while_critical_is_503_not_500(tiny_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write_temp(root, 90)
    service = make_service(tiny_bundle, tmp_path / "cache", root, thermal=ThermalPolicy(soft_c=70, hard_c=85))
    with TestClient(create_app(service)) as c:
        service.poll_thermal()
        assert service.thermal.state == "critical"
        (root / "sys/class/thermal/thermal_zone0/temp").unlink()  # the sensor stops answering
        service.poll_thermal()
        r = c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "cannot be read" in r.json()["error"] and r.json()["error"].endswith(".")
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200
        _write_temp(root, 60)
        service.poll_thermal()
        assert (
            c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ}).status_code
            == 200
        )
