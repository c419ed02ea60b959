"""Images built with bake and pushed to the local registry, then run for real (arm64 under QEMU)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import STANDIN, STANDIN_PYTHON, BuiltImage, BuiltImages, runtime_source_hash
from tests.support import need

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def registry_get(repo_ref: str, digest: str, kind: str = "manifests") -> dict[str, Any]:
    host, name = repo_ref.split("/", 1)
    r = httpx.get(f"http://{host}/v2/{name}/{kind}/{digest}", headers={"Accept": ACCEPT}, timeout=30)
    r.raise_for_status()
    return dict(r.json())


def platform_manifest(image: BuiltImage, platform: str) -> dict[str, Any]:
    return registry_get(image.repository, image.platforms[platform])


def config(image: BuiltImage, platform: str) -> dict[str, Any]:
    m = platform_manifest(image, platform)
    return registry_get(image.repository, m["config"]["digest"], "blobs")


def base_layers(platform: str) -> set[str]:
    """Layer digests of the stand-in base for ``platform`` (its per-platform manifest in the local registry)."""
    repo, tag = STANDIN.rsplit(":", 1)
    index = registry_get(repo, tag)
    arch = platform.split("/")[1]
    digest = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch)
    return {layer["digest"] for layer in registry_get(repo, digest)["layers"]}


def layer_files(repo_ref: str, digest: str) -> tuple[int, list[str]]:
    """A gzip layer's unpacked size (tar bytes: what it takes on the robot's disk) and its member names."""
    host, name = repo_ref.split("/", 1)
    r = httpx.get(f"http://{host}/v2/{name}/blobs/{digest}", timeout=120)
    r.raise_for_status()
    raw = gzip.decompress(r.content)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return len(raw), tar.getnames()


def test_runtime_adds_little_above_its_base(built_images: BuiltImages, record_property: Any) -> None:
    layers = platform_manifest(built_images.runtime, "linux/arm64")["layers"]
    base = base_layers("linux/arm64")
    assert base <= {layer["digest"] for layer in layers}, "built FROM the stand-in base"
    own = [layer for layer in layers if layer["digest"] not in base]
    above = sum(layer["size"] for layer in own)
    unpacked, names = 0, []
    for layer in own:
        size, members = layer_files(built_images.runtime.repository, layer["digest"])
        unpacked += size
        names += members
    record_property("runtime_bytes_above_base", above)
    record_property("runtime_unpacked_bytes_above_base", unpacked)
    # numpy + onnxruntime + cuda-python + the service stack + their bytecode + edge_runtime + a small bundle;
    # no torch. Measured 55.0 MB compressed, 170.6 MB unpacked (cuda-python: +5.9 / +26.8 MB).
    assert 10e6 < above < 65e6, above
    assert 100e6 < unpacked < 180e6, unpacked

    # TensorRT is the base's: our layers hold one symlink to it, none of its files (nor a pip)
    def of_tensorrt(name: str) -> bool:
        file = name.rsplit("/", 1)[-1]
        return (
            file.startswith(("libnvinfer", "libnvonnxparser"))
            or "/site-packages/tensorrt" in name
            or (file.startswith("tensorrt") and ".so" in file)
        )

    trt = [n for n in names if of_tensorrt(n)]
    assert [n.lstrip("./") for n in trt] == [
        f"opt/edge/venv/lib/python{STANDIN_PYTHON}/site-packages/tensorrt"
    ], trt
    assert any("/site-packages/cuda/bindings/runtime." in n for n in names), "cuda-python is ours"
    assert not any("/site-packages/pip/" in n for n in names)


def test_pushed_index_has_platforms_and_labels(built_images: BuiltImages) -> None:
    assert list(built_images.runtime.platforms) == ["linux/arm64"]
    assert list(built_images.converter.platforms) == ["linux/amd64"]
    index = registry_get(built_images.runtime.repository, built_images.runtime.digest)
    assert "manifests" in index, "runtime is pushed as an OCI index"
    cfg = config(built_images.runtime, "linux/arm64")
    assert cfg["architecture"] == "arm64"
    labels = cfg["config"]["Labels"]
    assert labels["io.edge-deploy.bundle.sha256"] == built_images.bundle_sha256
    assert labels["io.edge-deploy.precision"] == "fp16"
    assert labels["org.opencontainers.image.version"] == built_images.version
    assert labels["org.opencontainers.image.base.name"] == STANDIN
    assert len(labels["org.opencontainers.image.revision"]) >= 7
    assert labels["org.opencontainers.image.created"].endswith("Z")
    # the bundle baked in is the one exported from the model stage
    bundle = json.loads((built_images.bundle_dir / "bundle.json").read_text())
    assert bundle["bundle_sha256"] == built_images.bundle_sha256


def test_runtime_is_non_root_with_no_secrets(built_images: BuiltImages) -> None:
    cfg = config(built_images.runtime, "linux/arm64")
    assert cfg["config"]["User"] not in ("", "0", "root")
    assert cfg["config"]["Entrypoint"] == ["edge-runtime", "serve"]
    assert cfg["config"]["Healthcheck"]["Test"][-1] == "edge_runtime.healthcheck"
    text = json.dumps(cfg["history"]) + json.dumps(cfg["config"].get("Env", []))
    for needle in ("BEGIN CERTIFICATE", "PIP_CERT", "PASSWORD", "TOKEN", "ca-certificates.crt", "secret"):
        assert needle.lower() not in text.lower(), needle
    conv = config(built_images.converter, "linux/amd64")
    assert conv["config"]["User"] not in ("", "0", "root")
    assert "secret" not in json.dumps(conv["history"]).lower()


def test_runtime_image_holds_device_side_only(built_images: BuiltImages) -> None:
    ref = built_images.runtime.ref
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            ref,
            "-c",
            "import importlib.util as u; print([m for m in ('edge_runtime', 'onnxruntime', 'tensorrt', 'cuda', "
            "'torch', 'edge_deploy', 'docker', 'pip') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # tensorrt is the base's own (a symlink into its dist-packages), cuda is cuda-python from the jetson extra
    assert out.stdout.strip() == "['edge_runtime', 'onnxruntime', 'tensorrt', 'cuda']"


def test_runtime_code_ships_its_bytecode(built_images: BuiltImages) -> None:
    """Every edge_runtime module has hash-based bytecode from the image's own Python, so the read-only
    container (PYTHONDONTWRITEBYTECODE) never compiles at start or in a health check."""
    check = (
        "import importlib.util as u, pathlib, sys; "
        "root = pathlib.Path(u.find_spec('edge_runtime').origin).parent; "
        "mods = sorted(root.rglob('*.py')); "
        "missing = [str(m) for m in mods if not pathlib.Path(u.cache_from_source(str(m))).is_file()]; "
        "flags = {int.from_bytes(pathlib.Path(u.cache_from_source(str(m))).read_bytes()[4:8], 'little') "
        "for m in mods if str(m) not in missing}; "
        "import json; print(json.dumps({'modules': len(mods), 'missing': missing, 'flags': sorted(flags)}))"
    )
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            built_images.runtime.ref,
            "-c",
            check,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["modules"] > 20 and found["missing"] == [], found
    assert found["flags"] == [1], found  # pyc flags 0b01: hash-based, not checked against the source


def _run_service(ref: str, volume: str, port: int) -> tuple[str, float]:
    name = f"edge-e2e-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--platform",
            "linux/arm64",
            "--network",
            "host",
            "-e",
            f"EDGE_PORT={port}",
            "-e",
            "EDGE_HOST=127.0.0.1",
            "-v",
            f"{volume}:/var/cache/edge",
            ref,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return name, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", name],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if state == "false":
            break
        time.sleep(0.5)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    raise AssertionError(f"service did not become ready: {logs.stdout[-1500:]} {logs.stderr[-1500:]}")


def _stop(name: str) -> str:
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    return logs.stdout + logs.stderr


def test_engine_built_on_first_start_and_loaded_from_volume(
    built_images: BuiltImages, record_property: Any
) -> None:
    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle

    volume = f"edge-e2e-cache-{uuid.uuid4().hex[:8]}"
    port = 18600 + uuid.uuid4().int % 300
    subprocess.run(["docker", "volume", "create", volume], check=True, capture_output=True, timeout=60)
    try:
        first, cold_s = _run_service(built_images.runtime.ref, volume, port)
        metrics_1 = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        logs_1 = _stop(first)
        second, warm_s = _run_service(built_images.runtime.ref, volume, port)
        try:
            metrics_2 = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            rng = np.random.default_rng(7)
            image = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
            state = rng.standard_normal((2, 48), dtype=np.float32)
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/infer",
                timeout=60,
                json={"inputs": {"image": image.tolist(), "robot_state": state.tolist()}},
            )
            assert r.status_code == 200, r.text
            served = np.asarray(r.json()["outputs"]["action"], dtype=np.float32)
        finally:
            logs_2 = _stop(second)
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, timeout=60)
    assert 'edge_engine_cache_total{result="miss"} 1.0' in metrics_1
    assert 'edge_engine_cache_total{result="hit"} 1.0' in metrics_2
    assert "cache miss" in logs_1 and "cache hit" in logs_2
    # the same input through ONNX Runtime on the host, from the bundle baked into the image
    bundle = ModelBundle.load(built_images.bundle_dir)
    backend = get_backend("onnxruntime")
    opts = BuildOptions(precision=bundle.manifest.precision, batch=bundle.manifest.batch)
    engine = backend.load(backend.build(bundle, opts), bundle, opts)
    expected = engine.infer({"image": image, "robot_state": state})["action"]
    assert served.shape == (2, 7)
    np.testing.assert_allclose(served, expected, atol=2e-3, rtol=1e-3)  # arm64 vs x86 kernels, fp16 model
    record_property("cold_ready_s", round(cold_s, 2))
    record_property("warm_ready_s", round(warm_s, 2))


def test_model_only_change_pushes_one_small_layer(
    built_images: BuiltImages, tmp_path: Path, record_property: Any
) -> None:
    from edge_deploy.images import build_images

    # Same code, same wheels: only the model differs (fp32 instead of fp16).
    result = build_images(
        model_dir=built_images.model_dir,
        model="policy.pt",
        precision="fp32",
        version=built_images.version + "-m",
        registry=built_images.runtime.repository.split("/")[0],
        l4t_base=STANDIN,
        converter_base=STANDIN,
        runtime_python=STANDIN_PYTHON,
        push=True,
        progress="quiet",
        bundle_out=tmp_path / "bundle",
    )
    new = result.runtime
    assert new.digest is not None and new.digest != built_images.runtime.digest
    # On a shared working tree the device code may be edited between the two builds; then its layer
    # changes too and this is not a model-only change (never the case in CI's clean checkout).
    need(
        runtime_source_hash() == built_images.runtime_source,
        "runtime/edge_runtime unchanged between the two builds (it was edited during the test)",
    )
    old_layers = platform_manifest(built_images.runtime, "linux/arm64")["layers"]
    new_image = BuiltImage(built_images.runtime.repository, new.digest, new.tags, new.platforms, 0)
    new_layers = platform_manifest(new_image, "linux/arm64")["layers"]
    old_digests = {layer["digest"] for layer in old_layers}
    added = [layer for layer in new_layers if layer["digest"] not in old_digests]
    assert len(added) == 1, added
    assert new_layers[-1] == added[0], "the bundle is the last layer"
    bundle_bytes = sum(p.stat().st_size for p in (tmp_path / "bundle").iterdir())
    # compressed tar of the bundle: no bigger than the bundle plus tar overhead
    assert added[0]["size"] <= bundle_bytes + 64 * 1024
    assert added[0]["size"] >= 0.3 * bundle_bytes
    record_property("model_only_pushed_layer_bytes", added[0]["size"])
    record_property("bundle_bytes", bundle_bytes)
