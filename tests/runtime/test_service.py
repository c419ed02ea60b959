from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edge_runtime.service import NPZ, InferenceService, ServiceConfig, create_app
from edge_runtime.thermal import ThermalPolicy
from tests.runtime.conftest import make_service, sample_feeds


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


def test_watchdog_marks_unhealthy(tiny_bundle: Path, tmp_path: Path) -> None:
    service = make_service(tiny_bundle, tmp_path / "cache", tmp_path / "none", deadline_ms=100)
    assert service.engine is not None
    real = service.engine.infer

    def stuck(feeds):  # type: ignore[no-untyped-def]
        time.sleep(0.6)
        return real(feeds)

    service.engine.infer = stuck  # type: ignore[method-assign]
    with TestClient(create_app(service)) as c:
        assert c.get("/healthz").status_code == 200
        c.post("/v1/infer", content=_npz(sample_feeds()), headers={"Content-Type": NPZ})
        health = c.get("/healthz")
        assert health.status_code == 503 and "deadline" in health.json()["reason"]
        assert "edge_watchdog_trips_total 1.0" in c.get("/metrics").text


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
