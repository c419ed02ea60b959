"""Several models served side by side from a model repository (ONNX Runtime, real engines): per-model routes,
readiness and metrics, pipelines, concurrency and request slots, the memory budget, a broken model named.

The TensorRT side of request slots (one execution context and CUDA stream per slot) is not exercised
here: no TensorRT engine runs on our machines (docs/runtime.md)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edge_runtime.errors import EdgeError
from edge_runtime.service import NPZ, InferenceService, ServiceConfig, create_app
from tests.runtime.bundles import write_detector_bundle, write_linear_bundle
from tests.runtime.test_serve_cli import ENV

HW = 16
PIPELINES = {
    "version": 1,
    "pipelines": [
        {
            "name": "perceive-act",
            "steps": [{"model": "detector"}, {"model": "policy", "inputs": {"image": "detector.features"}}],
            "outputs": ["policy.action", "detector.score"],
        }
    ],
}


def write_repository(root: Path, pipelines: dict | None = PIPELINES) -> Path:
    rng = np.random.default_rng(5)
    write_detector_bundle(root / "detector", image_hw=HW)
    write_linear_bundle(
        root / "policy", rng.standard_normal((51, 7)), rng.standard_normal(7), image_hw=HW, name="policy"
    )
    if pipelines is not None:
        (root / "pipelines.json").write_text(json.dumps(pipelines))
    return root


def feeds(batch: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch, 3, HW, HW)).astype(np.float32),
        "robot_state": rng.standard_normal((batch, 48)).astype(np.float32),
    }


def reference(bundle: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle / "model.onnx"))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def make(repo: Path, cache: Path, **kw: object) -> InferenceService:
    config = ServiceConfig(
        bundle=None,
        models=repo,
        cache=cache,
        backend="onnxruntime",
        device_root=cache / "no-device",
        warmup_runs=1,
        **kw,
    )  # type: ignore[arg-type]
    return InferenceService(config)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def client(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    service = make(repo, tmp_path_factory.mktemp("cache"), slots="policy=2")
    service.load()
    with TestClient(create_app(service)) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


def test_every_model_is_listed_ready_and_described(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert sorted(models) == ["detector", "policy"]
    assert all(m["ready"] and m["backend"] == "onnxruntime" and m["version"] == "1" for m in models.values())
    assert models["policy"]["slots"] == 2 and models["detector"]["slots"] == 1
    assert [t["name"] for t in models["detector"]["outputs"]] == ["features", "score"]
    (pipe,) = body["pipelines"]
    assert pipe["name"] == "perceive-act" and pipe["models"] == ["detector", "policy"] and pipe["ready"]
    assert [t["name"] for t in pipe["inputs"]] == ["image", "robot_state"]
    for name, platform in (
        ("detector", "onnxruntime"),
        ("policy", "onnxruntime"),
        ("perceive-act", "pipeline"),
    ):
        meta = client.get(f"/v2/models/{name}").json()
        assert meta["name"] == name and meta["platform"] == platform
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
    assert client.get("/v2/models/other").status_code == 404


def test_readyz_keeps_its_keys_and_adds_every_model(client: TestClient) -> None:
    r = client.get("/readyz")
    body = r.json()
    assert r.status_code == 200 and body["ready"] is True
    assert body["model"] == "detector" and body["backend"] == "onnxruntime" and "startup" in body
    assert body["models"] == {
        "detector": {"ready": True, "backend": "onnxruntime"},
        "policy": {"ready": True, "backend": "onnxruntime"},
    }
    assert sorted(body["startup"]["models"]) == ["detector", "policy"]


def test_each_model_answers_under_its_name_as_onnxruntime_does(client: TestClient, repo: Path) -> None:
    f = feeds()
    r = client.post("/v1/models/policy/infer", json={"inputs": {k: v.tolist() for k, v in f.items()}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["outputs"]["action"], reference(repo / "policy", f)["action"], atol=1e-5
    )
    buf = io.BytesIO()
    np.savez(buf, image=f["image"])
    r = client.post(
        "/v1/models/detector/infer", content=buf.getvalue(), headers={"Content-Type": NPZ, "Accept": NPZ}
    )
    assert r.status_code == 200
    with np.load(io.BytesIO(r.content)) as out:
        np.testing.assert_allclose(
            out["features"], reference(repo / "detector", {"image": f["image"]})["features"], atol=1e-5
        )
    # The unnamed route serves the default model (the first by name): the detector.
    r = client.post("/v1/infer", json={"inputs": {"image": f["image"].tolist()}})
    assert r.status_code == 200 and sorted(r.json()["outputs"]) == ["features", "score"]
    r = client.post("/v1/models/nope/infer", json={"inputs": {}})
    assert r.status_code == 404 and "'nope' is not served here" in r.json()["error"]
    r = client.post("/v1/models/policy/infer", json={"inputs": {"image": f["image"].tolist()}})
    assert r.status_code == 400 and "robot_state" in r.json()["error"]


def test_pipeline_equals_two_client_round_trips(client: TestClient, repo: Path) -> None:
    f = feeds(3, seed=9)
    det = reference(repo / "detector", {"image": f["image"]})
    act = reference(repo / "policy", {"image": det["features"], "robot_state": f["robot_state"]})["action"]
    r = client.post(
        "/v1/pipelines/perceive-act/infer", json={"inputs": {k: v.tolist() for k, v in f.items()}}
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert sorted(out) == ["action", "score"]
    np.testing.assert_allclose(out["action"], act, atol=1e-4)
    np.testing.assert_allclose(out["score"], det["score"], atol=1e-5)
    # The same pipeline as an Open Inference Protocol model.
    doc = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
            for k, v in f.items()
        ],
        "outputs": [{"name": "action"}],
    }
    r = client.post("/v2/models/perceive-act/infer", json=doc)
    assert r.status_code == 200, r.text
    (o,) = r.json()["outputs"]
    np.testing.assert_allclose(np.array(o["data"]).reshape(o["shape"]), act, atol=1e-4)
    assert client.post("/v1/pipelines/policy/infer", json={"inputs": {}}).status_code == 404
    r = client.post("/v1/pipelines/perceive-act/infer", json={"inputs": {"image": f["image"].tolist()}})
    assert r.status_code == 400 and "Pipeline 'perceive-act'" in r.json()["error"]


def test_metrics_are_labelled_by_model(client: TestClient) -> None:
    client.post("/v1/models/policy/infer", json={"inputs": {k: v.tolist() for k, v in feeds(1).items()}})
    text = client.get("/metrics").text
    for line in (
        'edge_model_ready{model="detector"} 1.0',
        'edge_model_ready{model="policy"} 1.0',
        'edge_model_slots{model="policy"} 2.0',
        'edge_model_engine_cache_total{model="policy",result="miss"} 1.0',
        'edge_model_inference_latency_seconds_count{model="policy"}',
        'edge_model_inference_latency_seconds_count{model="perceive-act"}',
        'edge_engine_cache_total{result="miss"} 2.0',  # the service-wide series, as before
        'edge_model_requests_total{code="200",model="policy"}',
        'edge_model_requests_total{code="404",model="unknown"}',
    ):
        assert line in text, line


def _timed(service: InferenceService, calls: list[str]) -> float:
    """Run one inference per name at once, each on its own thread; the wall time of all of them."""
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            service.infer(
                {k: v[:1] for k, v in feeds(1).items() if k in {s.name for s in service.models[name].inputs}},
                name,
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in calls]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return time.perf_counter() - t0


def test_different_models_run_concurrently_and_slots_bound_each(repo: Path, tmp_path: Path) -> None:
    service = make(repo, tmp_path, slots="policy=2")
    service.load()
    delay = 0.5
    for m in service.models.values():  # a slow engine makes overlap visible on a loaded 2-core machine
        assert m.engine is not None
        real = m.engine.infer

        def slow(f: object, real: object = real) -> object:
            time.sleep(delay)
            return real(f)  # type: ignore[operator]

        m.engine.infer = slow  # type: ignore[method-assign]
    try:
        assert _timed(service, ["detector", "policy"]) < 1.6 * delay  # two models: together
        assert _timed(service, ["detector", "detector"]) >= 2 * delay  # one slot: one after the other
        assert _timed(service, ["policy", "policy"]) < 1.6 * delay  # two slots: together
        assert _timed(service, ["policy"] * 4) >= 2 * delay  # four requests, two slots: two rounds
    finally:
        service.close()


def test_concurrent_requests_on_real_sessions_give_correct_answers(repo: Path, tmp_path: Path) -> None:
    """ONNX Runtime's run() on one session from several slots at once: every answer matches its inputs."""
    service = make(repo, tmp_path, slots=3)
    service.load()
    results: list[bool] = []

    def worker(seed: int) -> None:
        f = feeds(2, seed=seed)
        for _ in range(5):
            out = service.infer(f, "policy")["action"]
            results.append(bool(np.allclose(out, reference(repo / "policy", f)["action"], atol=1e-5)))
            det = service.infer({"image": f["image"]}, "detector")["score"]
            results.append(
                bool(
                    np.allclose(det, reference(repo / "detector", {"image": f["image"]})["score"], atol=1e-5)
                )
            )

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    service.close()
    assert len(results) == 60 and all(results)


def test_a_broken_model_is_named_and_not_ready(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "models", pipelines=None)
    broken = repo / "policy" / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    manifest = json.loads((repo / "policy" / "bundle.json").read_text())
    from edge_runtime.bundle import sha256_file

    manifest["files"]["model.onnx"] = sha256_file(broken)
    (repo / "policy" / "bundle.json").write_text(json.dumps(manifest))
    service = make(repo, tmp_path / "cache")
    with pytest.raises(EdgeError, match=r"^Model 'policy': ONNX Runtime could not"):
        service.load()
    status, body = service.readiness()
    assert status == 503 and body["models"]["detector"]["ready"] is True
    assert body["models"]["policy"]["ready"] is False and "could not" in body["models"]["policy"]["reason"]
    service.close()


def test_empty_models_dir_serves_the_single_bundle(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = ServiceConfig(
        bundle=repo / "policy",
        models=tmp_path / "empty",
        cache=tmp_path / "c",
        backend="onnxruntime",
        device_root=tmp_path,
        warmup_runs=0,
    )
    service = InferenceService(config)
    service.load()
    assert list(service.models) == ["policy"] and service.repository is None
    assert "models" not in service.startup and service.readiness()[1]["model"] == "policy"
    service.close()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", "serve", "--backend", "onnxruntime", *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_refuses_models_over_the_memory_budget_in_one_sentence(repo: Path, tmp_path: Path) -> None:
    r = _serve(
        "--cache",
        str(tmp_path / "c"),
        env={"EDGE_MODELS": str(repo), "EDGE_MEMORY_BUDGET_MB": "8", "EDGE_SLOTS": "2"},
    )
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "Traceback" not in r.stderr
    assert "The models do not fit in memory: detector" in line and ", policy " in line
    assert "(2 slots)" in line and "budget of 8 MiB (EDGE_MEMORY_BUDGET_MB=8)" in line


def test_cli_refuses_a_bad_pipelines_file_before_listening(tmp_path: Path) -> None:
    repo = write_repository(
        tmp_path / "models",
        {
            "pipelines": [
                {
                    "name": "p",
                    "steps": [
                        {"model": "policy"},
                        {"model": "detector", "inputs": {"image": "policy.action"}},
                    ],
                }
            ]
        },
    )
    r = _serve("--models", str(repo), "--cache", str(tmp_path / "c"), "--port", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "output 'policy.action'" in r.stderr and "does not fit input 'image' of 'detector'" in r.stderr
    r = _serve("--cache", str(tmp_path / "c"), env={"EDGE_MODELS": str(tmp_path / "none"), "EDGE_BUNDLE": ""})
    assert r.returncode == 2 and "No model to serve" in r.stderr and "Traceback" not in r.stderr


def test_serve_process_serves_the_repository(repo: Path, tmp_path: Path) -> None:
    """The real CLI and HTTP server: EDGE_MODELS, both models and the pipeline over a loopback socket."""
    import httpx
    from bench._serve import ServiceProcess

    env = {**ENV, "EDGE_MODELS": str(repo), "EDGE_SLOTS": "2"}
    env.pop("EDGE_BUNDLE", None)
    with ServiceProcess(None, tmp_path / "c", "onnxruntime", ["--warmup", "1"], env=env) as svc:
        svc.wait_ready(timeout_s=60)
        ready = httpx.get(f"{svc.url}/readyz").json()
        assert sorted(ready["models"]) == ["detector", "policy"] and ready["model"] == "detector"
        f = feeds(1)
        r = httpx.post(
            f"{svc.url}/v1/pipelines/perceive-act/infer",
            json={"inputs": {k: v.tolist() for k, v in f.items()}},
        )
        assert r.status_code == 200 and np.array(r.json()["outputs"]["action"]).shape == (1, 7)
        listed = httpx.get(f"{svc.url}/v1/models").json()
        assert [m["slots"] for m in listed["models"]] == [2, 2]


def test_ros2_bridge_model_must_be_served(repo: Path, tmp_path: Path) -> None:
    """``--ros2-model`` picks the model or pipeline the bridge feeds; a name not served is one sentence."""
    r = _serve("--models", str(repo), "--cache", str(tmp_path / "c"), "--ros2", "--ros2-model", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--ros2-model: Model 'nope' is not served here" in r.stderr


def test_engine_build_builds_and_pins_every_model_and_serve_hits_them(repo: Path, tmp_path: Path) -> None:
    """What a rollout's pre-build runs in a release of several models: every engine built, one pin keeping
    all of them; the service then starts on cache hits."""
    cache = tmp_path / "c"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "engine",
            "build",
            "--backend",
            "onnxruntime",
            "--cache",
            str(cache),
            "--json",
        ],
        env={**ENV, "EDGE_MODELS": str(repo), "EDGE_ENGINE_PIN": "1.2.0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert [m["model"] for m in info["models"]] == ["detector", "policy"] and info["hit"] is False
    assert info["key"] == info["models"][0]["key"] and info["pin"] == "1.2.0"
    from edge_runtime.cache import EngineCache

    assert EngineCache(cache).pins() == {"1.2.0": [m["key"] for m in info["models"]]}
    config = ServiceConfig(bundle=None, models=repo, cache=cache, backend="onnxruntime", warmup_runs=0)
    service = InferenceService(config)  # the real device, as engine build probed it: same cache keys
    service.load()
    assert all(m["cache_hit"] for m in service.startup["models"].values())
    service.close()


@pytest.mark.timeout(240)
def test_ros2_bridge_drives_a_pipeline(repo: Path, tmp_path: Path) -> None:
    """``EDGE_ROS2_MODEL=perceive-act``: camera frames and robot state over DDS go through the detector and
    the policy inside the service; every action equals the two models chained by hand."""
    import signal

    from bench._serve import ServiceProcess

    from tests.runtime.ros2_support import (
        dds_env,
        expected_feeds,
        finish_peer,
        need_cyclonedds,
        random_domain,
        start_peer,
    )

    need_cyclonedds()
    domain = random_domain()
    env = dds_env(domain, PYTHONUNBUFFERED="1", EDGE_MODELS=str(repo), EDGE_ROS2_MODEL="perceive-act")
    env.pop("EDGE_BUNDLE", None)
    with ServiceProcess(
        None, tmp_path / "c", "onnxruntime", ["--ros2", "--warmup", "1"], env=env, merge_output=True
    ) as svc:
        svc.wait_ready(timeout_s=60)
        out = tmp_path / "peer.npz"
        err = finish_peer(start_peer(domain, out, "--rounds", "3", "--height", str(HW), "--width", str(HW)))
        assert out.exists(), err
        svc.proc.send_signal(signal.SIGTERM)
        log = svc.proc.communicate(timeout=30)[0]
    assert "ROS 2 bridge started" in log
    got = np.load(out)
    assert len(got["actions"]) == 3
    for image, state, action in zip(got["images"], got["states"], got["actions"], strict=True):
        f = expected_feeds(image, state)
        det = reference(repo / "detector", {"image": f["image"]})
        want = reference(repo / "policy", {"image": det["features"], "robot_state": f["robot_state"]})[
            "action"
        ][0]
        np.testing.assert_allclose(action, want, rtol=1e-4, atol=1e-5)
