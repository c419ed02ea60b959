"""A release of several models, for real: a generated detector-like CNN (ONNX, fp32) whose detections feed
the sample policy (fp16) through a declared pipeline, built with bake (one layer per model at
/opt/edge/models/<name>/) and pushed to the local registry; a model-only release that changes the policy
alone moves one layer (bytes measured); then on a simulated robot (arm64 under QEMU) both are served and
pass the gate, and a release whose policy is broken rolls back with that model named."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.build.multi_models import write_broken_policy, write_detector
from tests.e2e.conftest import STANDIN, STANDIN_PYTHON, delete_tags
from tests.e2e.fleet_fixtures import REGISTRY, REPO_NAME, FleetImages, SimFleet, sim_fleet, why
from tests.e2e.test_images import BuiltImage, config, platform_manifest

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

PIPELINE = "act"


@dataclass
class TwoModels:
    """The two-model release as built and pushed, and where its models came from."""

    image: BuiltImage
    models_dir: Path
    bundles: Path  # the exported bundles, one directory per model
    result: Any  # BuildResult
    version: str
    source: Path  # the staged build context every build of this file uses


def _build(models: Any, version: str, bundles: Path, source: Path) -> Any:
    from edge_deploy.images import build_images

    return build_images(
        source=source,  # one copy of the tool's files for every build of the file: code never differs
        models=models,
        version=version,
        registry=REGISTRY,
        l4t_base=STANDIN,
        converter_base=STANDIN,
        runtime_python=STANDIN_PYTHON,
        push=True,
        progress="quiet",
        bundle_out=bundles,
    )


def _image(result: Any) -> BuiltImage:
    r = result.runtime
    assert r.digest is not None, "the runtime was not pushed"
    return BuiltImage(r.repository, r.digest, r.tags, r.platforms, r.size_bytes)


@pytest.fixture(scope="module")
def two_models(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    """detector (fp32) + policy (fp16) + a pipeline feeding the detections to the policy's robot_state."""
    from edge_deploy.images import load_models_file
    from edge_deploy.images.files import stage_context
    from edge_deploy.model.sample import write_sample_policy

    d = tmp_path_factory.mktemp("models")
    write_detector(d / "detector.onnx")
    write_sample_policy(d / "policy.pt")
    pipelines = {
        "version": 1,
        "pipelines": [
            {
                "name": PIPELINE,
                "steps": [
                    {"model": "detector"},
                    {"model": "policy", "inputs": {"robot_state": "detector.detections"}},
                ],
            }
        ],
    }
    (d / "pipelines.json").write_text(json.dumps(pipelines))
    (d / "models.yaml").write_text(
        "models:\n"
        "  - {name: detector, path: detector.onnx, precision: fp32}\n"
        "  - {name: policy, path: policy.pt, precision: fp16}\n"
        "pipelines: pipelines.json\n"
    )
    version = f"e2e-{uuid.uuid4().hex[:8]}-mm"
    # The tool's files staged once: a release that changes a model alone, even while the working tree
    # is edited between the builds (a shared checkout), as CI's clean checkout always is.
    source = stage_context(d / "context")
    try:
        result = _build(load_models_file(d / "models.yaml"), version, d / "baked", source)
        yield TwoModels(_image(result), d, d / "baked", result, version, source)
    finally:
        for name in ("converter", "runtime"):
            delete_tags(docker_host, f"edge-deploy/{name}", version)


def layer_members(image: BuiltImage, digest: str) -> list[str]:
    import httpx

    host, name = image.repository.split("/", 1)
    r = httpx.get(f"http://{host}/v2/{name}/blobs/{digest}", timeout=120)
    r.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(r.content)), mode="r:") as tar:
        return [m for m in tar.getnames() if not m.endswith("/") and tar.getmember(m).isfile()]


def test_each_model_is_its_own_last_layer(two_models: TwoModels, record_property: Any) -> None:
    img = two_models.image
    layers = platform_manifest(img, "linux/arm64")["layers"]
    *_, det, pol, pipes = layers
    assert {m.split("/")[3] for m in layer_members(img, det["digest"])} == {"detector"}
    assert {m.split("/")[3] for m in layer_members(img, pol["digest"])} == {"policy"}
    assert layer_members(img, pipes["digest"]) == ["opt/edge/models/pipelines.json"]
    for name in ("detector", "policy"):
        members = layer_members(img, (det if name == "detector" else pol)["digest"])
        assert (
            f"opt/edge/models/{name}/bundle.json" in members
            and f"opt/edge/models/{name}/model.onnx" in members
        )
    # no single-model bundle: the runtime serves the repository
    below = [m for layer in layers[-6:-3] for m in layer_members(img, layer["digest"])]
    assert not any(m.startswith("opt/edge/bundle/") for m in below)
    labels = config(img, "linux/arm64")["config"]["Labels"]
    built = {m["name"]: m for m in two_models.result.models}
    assert labels["io.edge-deploy.models"] == ",".join(
        f"{n}:{built[n]['precision']}:{built[n]['bundle_sha256']}" for n in ("detector", "policy")
    )
    assert labels["io.edge-deploy.bundle.sha256"] == two_models.result.bundle_sha256
    assert {m["name"]: m["precision"] for m in two_models.result.models} == {
        "detector": "fp32",
        "policy": "fp16",
    }
    for name in ("detector", "policy"):
        assert (
            json.loads((two_models.bundles / name / "bundle.json").read_text())["precision"]
            == built[name]["precision"]
        )
    record_property("detector_layer_bytes", det["size"])
    record_property("policy_layer_bytes", pol["size"])


def test_a_policy_only_release_moves_one_layer(
    two_models: TwoModels, tmp_path: Path, record_property: Any
) -> None:
    """Same code, same detector: only the policy differs (fp32 instead of fp16)."""
    from edge_deploy.images import load_models_file

    text = (two_models.models_dir / "models.yaml").read_text().replace("precision: fp16", "precision: fp32")
    (two_models.models_dir / "models-fp32.yaml").write_text(text)
    result = _build(
        load_models_file(two_models.models_dir / "models-fp32.yaml"),
        two_models.version + "-p",
        tmp_path / "b",
        two_models.source,
    )
    new = _image(result)
    old_layers = platform_manifest(two_models.image, "linux/arm64")["layers"]
    new_layers = platform_manifest(new, "linux/arm64")["layers"]
    added = [layer for layer in new_layers if layer["digest"] not in {x["digest"] for x in old_layers}]
    assert len(added) == 1, added
    assert new_layers[-2] == added[0], "the policy's layer, and only it, moved"
    assert new_layers[-3] == old_layers[-3], "the detector's layer is the same blob"
    bundle_bytes = sum(p.stat().st_size for p in (tmp_path / "b" / "policy").iterdir())
    assert 0.3 * bundle_bytes <= added[0]["size"] <= bundle_bytes + 64 * 1024
    print(
        f"\npolicy-only release: 1 layer moved, {added[0]['size']} bytes (policy bundle {bundle_bytes} bytes)"
    )
    record_property("policy_only_pushed_layer_bytes", added[0]["size"])
    record_property("policy_bundle_bytes", bundle_bytes)


BASE, BROKEN = "3.0.0", "3.0.1"


@pytest.fixture(scope="module")
def robot(two_models: TwoModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    """One simulated robot whose first rollout puts the two-model release on it."""
    images = FleetImages(two_models.image.ref)
    try:
        with sim_fleet(
            images,
            tmp_path_factory.mktemp("multi-model"),
            1,
            "multi",
            base=BASE,
            base_ref=two_models.image.ref,
            title="multi-model",
            ssh_port_base=2551,
            service_port_base=18351,
        ) as f:
            yield f
    finally:
        delete_tags(REGISTRY, REPO_NAME, images.session)


def _on_service(f: SimFleet, call: Any) -> Any:
    import httpx

    async def run() -> Any:
        port = f.robot().service_port  # robots share the host's network namespace
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            return await call(http)

    return asyncio.run(run())


def test_two_models_serve_and_pass_the_gate(robot: SimFleet, record_property: Any) -> None:
    from edge_deploy.fleet import fleet_infer
    from edge_deploy.fleet.gate import ready_check, served_models, smoke_models

    first = robot.first_rollout()  # the gate smoke-tested every model: the rollout would have rolled back
    assert first["ok"] and first["robots"][0]["outcome"] == "updated", why(first)

    async def look(http: Any) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
        ready = await ready_check(http)
        report = await smoke_models(http, served_models(ready))
        listed = (await http.get("/v1/models")).json()
        image = np.random.default_rng(1).random((1, 3, 224, 224)).round(3).tolist()
        piped = await http.post(f"/v1/pipelines/{PIPELINE}/infer", json={"inputs": {"image": image}})
        # Two CNNs one after the other under QEMU may pass the service's 2 s watchdog deadline: /readyz
        # says 503 until the watchdog's next look (a real Jetson runs them in milliseconds).
        for _ in range(60):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(1)
        return ready, report, listed, piped

    ready, report, listed, piped = _on_service(robot, look)
    assert set(ready["models"]) == {"detector", "policy"} and all(
        m["ready"] for m in ready["models"].values()
    )
    assert {n: r["outputs"] for n, r in report.items()} == {
        "detector": {"detections": [1, 48]},
        "policy": {"action": [1, 7]},
    }
    assert [m["name"] for m in listed["models"]] == ["detector", "policy"]
    assert [p["name"] for p in listed["pipelines"]] == [PIPELINE]
    assert piped.status_code == 200, piped.text[:300]
    action = np.asarray(piped.json()["outputs"]["action"])
    assert action.shape == (1, 7) and np.isfinite(action).all()
    answers = fleet_infer(robot.fleet)  # `fleet infer`: every model's answer
    assert answers[0]["ok"] and set(answers[0]["models"]) == {"detector", "policy"}, answers
    record_property("first_rollout_two_models_s", robot.numbers.get("first_rollout_1_robots_s"))


def test_a_broken_model_rolls_back_naming_it(robot: SimFleet, tmp_path: Path) -> None:
    """The policy of this release loads and is ready but answers NaN: only the smoke inference of that
    model can tell, and the reason names it."""
    robot.at_base()
    write_broken_policy(tmp_path / "policy")
    broken = robot.images.image(
        "broken-policy", "COPY policy /opt/edge/models/policy/\n", {"policy": tmp_path / "policy"}
    )
    robot.release(BROKEN, broken)
    out = robot.deploy(BROKEN)
    r = out["robots"][0]
    assert not out["ok"] and r["outcome"] == "rolled_back", why(out)
    assert "model 'policy'" in r["reason"] and "non-finite values in action" in r["reason"], r["reason"]
    assert "detector" not in r["reason"]
    st = robot.status()[robot.names[0]]
    assert (st["version"], st["health"]) == (BASE, "healthy"), st
    assert set(st.get("models") or {}) == {"detector", "policy"}, st  # `fleet status`: every model
