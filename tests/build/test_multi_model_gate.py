"""The health gate on a release of several models: every model /readyz lists is smoke-tested from its own
metadata, and a failure (not ready, wrong backend, a bad answer) names the model. The service is a small
stand-in speaking the runtime's HTTP contract (httpx.MockTransport), so each failure is chosen here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_deploy.fleet.gate import (
    GateFailed,
    models_backend_check,
    ready_check,
    served_models,
    smoke_models,
)

META = {
    "detector": {
        "name": "detector",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]}],
        "outputs": [{"name": "detections", "datatype": "FP32", "shape": [-1, 48]}],
    },
    "policy": {
        "name": "policy",
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
            {"name": "robot_state", "datatype": "FP32", "shape": [-1, 48]},
        ],
        "outputs": [{"name": "action", "datatype": "FP32", "shape": [-1, 7]}],
    },
}


def service(readyz: dict[str, Any], answers: dict[str, Any], calls: list[str]) -> httpx.AsyncClient:
    """A client on a stand-in service: /readyz answers ``readyz``; model NAME answers ``answers[NAME]``
    (outputs by name → [shape, values]) to its infer."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(f"{request.method} {path}")
        if path == "/readyz":
            return httpx.Response(200 if readyz.get("ready") else 503, json=readyz)
        parts = path.split("/")  # /v2/models/NAME[/infer]
        name = parts[3] if len(parts) > 3 else ""
        if name not in META:
            return httpx.Response(404, json={"error": f"no model {name}"})
        if len(parts) == 4:
            return httpx.Response(200, json=META[name])
        outputs = [
            {"name": n, "datatype": "FP32", "shape": shape, "data": data}
            for n, (shape, data) in answers[name].items()
        ]
        body = json.dumps({"model_name": name, "outputs": outputs})  # NaN as Python writes it
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://robot")


GOOD = {"detector": {"detections": ([1, 48], [0.5] * 48)}, "policy": {"action": ([1, 7], [0.1] * 7)}}
READY = {
    "ready": True,
    "model": "detector",
    "backend": "onnxruntime",
    "models": {
        "detector": {"ready": True, "backend": "onnxruntime", "reason": None},
        "policy": {"ready": True, "backend": "onnxruntime", "reason": None},
    },
}


def gate(readyz: dict[str, Any], answers: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    calls: list[str] = []

    async def run() -> dict[str, Any]:
        async with service(readyz, answers, calls) as http:
            return await smoke_models(http, served_models(await ready_check(http)))

    return asyncio.run(run()), calls


def test_every_model_is_smoke_tested_from_its_own_metadata() -> None:
    report, calls = gate(READY, GOOD)
    assert report["detector"]["outputs"] == {"detections": [1, 48]}
    assert report["policy"]["outputs"] == {"action": [1, 7]}
    assert all(r["smoke_s"] >= 0 for r in report.values())
    assert calls == [
        "GET /readyz",
        "GET /v2/models/detector",
        "POST /v2/models/detector/infer",
        "GET /v2/models/policy",
        "POST /v2/models/policy/infer",
    ]


def test_a_release_of_one_model_is_gated_as_before() -> None:
    """An older runtime's /readyz has no ``models``: the one model it names is the one smoke-tested."""
    one = {"ready": True, "model": "policy", "backend": "onnxruntime"}
    assert served_models(one) == ["policy"]
    report, _ = gate(one, GOOD)
    assert list(report) == ["policy"]


def test_a_model_with_a_bad_answer_is_named() -> None:
    nan = {**GOOD, "policy": {"action": ([1, 7], [float("nan")] * 7)}}
    with pytest.raises(
        GateFailed, match=r"^model 'policy': smoke inference returned non-finite values in action$"
    ):
        gate(READY, nan)
    short = {**GOOD, "detector": {"detections": ([1, 40], [0.5] * 40)}}
    with pytest.raises(GateFailed, match=r"^model 'detector': smoke inference returned detections of shape"):
        gate(READY, short)


def test_a_model_not_ready_is_named_with_the_services_reason() -> None:
    sick = {
        **READY,
        "ready": False,
        "models": {
            "detector": {"ready": True, "backend": "onnxruntime"},
            "policy": {"ready": False, "reason": "model bundle unreadable: model.onnx sha256 differs."},
        },
    }
    with pytest.raises(
        GateFailed,
        match=r"^/readyz answered 503: model 'policy' is not ready \(model bundle unreadable: model\.onnx "
        r"sha256 differs\)$",
    ):
        gate(sick, GOOD)


def test_each_models_backend_is_checked() -> None:
    mixed = {
        **READY,
        "backend": "tensorrt",
        "models": {
            "detector": {"ready": True, "backend": "tensorrt"},
            "policy": {"ready": True, "backend": "onnxruntime"},
        },
    }
    with pytest.raises(
        GateFailed,
        match=r"^model 'policy': expected backend tensorrt \(the release requires TensorRT\), served onnxruntime$",
    ):
        models_backend_check(mixed, "tensorrt", "the release requires TensorRT")
    models_backend_check(mixed, None, "the release accepts ONNX Runtime on the CPU")  # nothing expected


def _real_gate(repo: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gate's own checks against the real service serving ``repo`` (ONNX Runtime, in process)."""
    from edge_runtime.service import InferenceService, ServiceConfig, create_app

    service = InferenceService(
        ServiceConfig(bundle=None, models=repo, cache=repo.parent / "cache", backend="onnxruntime")
    )
    service.prepare()
    service.load()
    app = create_app(service, load_in_background=False)

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://robot") as http:
            ready = await ready_check(http)
            return ready, await smoke_models(http, served_models(ready))

    try:
        return asyncio.run(run())
    finally:
        service.close()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """detector (the generated CNN, converted fp32) + a policy with the sample policy's interface."""
    from edge_deploy.model import ConvertOptions, convert
    from tests.build.multi_models import write_detector
    from tests.runtime.bundles import ACTION_DIM, STATE_DIM, write_linear_bundle

    repo = tmp_path / "models"
    convert(write_detector(tmp_path / "detector.onnx"), repo / "detector", ConvertOptions(precision="fp32"))
    write_linear_bundle(repo / "policy", np.ones((3 + STATE_DIM, ACTION_DIM)) * 0.01, np.zeros(ACTION_DIM))
    return repo


def test_the_real_service_of_two_models_passes_the_gate(repository: Path) -> None:
    ready, report = _real_gate(repository)
    assert set(ready["models"]) == {"detector", "policy"}
    assert {n: r["outputs"] for n, r in report.items()} == {
        "detector": {"detections": [1, 48]},
        "policy": {"action": [1, 7]},
    }


def test_the_real_service_with_a_broken_model_fails_the_gate_naming_it(repository: Path) -> None:
    import shutil

    from tests.build.multi_models import write_broken_policy

    shutil.rmtree(repository / "policy")
    write_broken_policy(repository / "policy")
    with pytest.raises(
        GateFailed, match=r"^model 'policy': smoke inference returned non-finite values in action$"
    ):
        _real_gate(repository)
