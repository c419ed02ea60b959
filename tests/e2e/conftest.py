"""Session fixtures for the e2e tests: the host's Docker engine and registry, stand-in bases, and the
converter + runtime images built once (real buildx bake, pushed to the local registry) and shared."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.fleet_fixtures import REPO_NAME, FleetImages
from tests.support import need

if TYPE_CHECKING:
    from edge_deploy.images import BuildResult, ImageResult

REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
STANDIN = os.environ.get("EDGE_L4T_BASE", f"{REGISTRY}/edge-deploy/l4t-standin:r36.4")
STANDIN_PYTHON = "3.11"  # Debian 12 stand-in; JetPack 6 has 3.10


def host_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return False
    import httpx

    try:
        return httpx.get(f"http://{REGISTRY}/v2/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class BuiltImage:
    repository: str
    digest: str
    tags: list[str]
    platforms: dict[str, str]
    size_bytes: int

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass
class BuiltImages:
    converter: BuiltImage
    runtime: BuiltImage
    bundle_dir: Path
    bundle_sha256: str
    model_dir: Path
    version: str
    result: BuildResult
    runtime_source: str  # hash of runtime/edge_runtime when the build started


def runtime_source_hash() -> str:
    """Hash of the device code baked into the runtime image (to tell a code edit from a model change)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[2] / "runtime" / "edge_runtime"
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def docker_host() -> str:
    """The host engine and registry from scripts/host-setup (fails under CI=true when absent)."""
    need(host_ready(), f"Docker engine and registry at {REGISTRY} (run scripts/host-setup)")
    inspect = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", STANDIN, "--format", "{{json .Image}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    need(inspect.returncode == 0, f"stand-in base {STANDIN} in the local registry (scripts/host-setup)")
    if "/edge-deploy/l4t-standin:" in STANDIN:  # ours, not a real l4t-jetpack given in EDGE_L4T_BASE
        need(
            "io.edge-deploy.standin.tensorrt-python" in inspect.stdout,
            f"the JetPack-shaped stand-in base {STANDIN} (TensorRT's Python module; scripts/host-setup rebuilds "
            "an older one)",
        )
    return REGISTRY


def _built(img: ImageResult) -> BuiltImage:
    assert img.digest is not None, f"{img.target} was not pushed"
    return BuiltImage(img.repository, img.digest, img.tags, img.platforms, img.size_bytes)


@pytest.fixture(scope="session")
def sample_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_deploy.model.sample import write_sample_policy

    d = tmp_path_factory.mktemp("model")
    write_sample_policy(d / "policy.pt", d / "calib.npz", calibration_count=16)
    return d


@pytest.fixture(scope="session")
def built_images(
    docker_host: str, sample_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImages]:
    """Converter + arm64 runtime (fp16 sample policy) built with bake and pushed, once per session.

    The session's tags (``e2e-<id>`` and tests' ``e2e-<id>-…``) are deleted from the registry at the end,
    so test runs do not pile up tags that release listings would show; layers stay cached.
    """
    from edge_deploy.images import build_images

    version = f"e2e-{uuid.uuid4().hex[:8]}"
    source = runtime_source_hash()
    bundle_dir = tmp_path_factory.mktemp("baked") / "bundle"
    try:
        result = build_images(
            model_dir=sample_model_dir,
            model="policy.pt",
            precision="fp16",
            version=version,
            registry=docker_host,
            l4t_base=STANDIN,
            converter_base=STANDIN,
            runtime_python=STANDIN_PYTHON,
            push=True,
            progress="quiet",
            bundle_out=bundle_dir,
        )
        yield BuiltImages(
            _built(result.converter),
            _built(result.runtime),
            bundle_dir,
            result.bundle_sha256,
            sample_model_dir,
            version,
            result,
            source,
        )
    finally:
        for name in ("converter", "runtime"):
            delete_tags(docker_host, f"edge-deploy/{name}", version)


def delete_tags(registry: str, repository: str, prefix: str | None) -> None:
    """Delete the manifests tagged ``prefix`` or ``prefix-…``, unless another tag shares the digest (a
    release made from the test image keeps it); ``None``: every manifest in the repository. Best effort: a
    registry error leaves the tags. The blobs go at the next ``scripts/host-prune`` (registry GC)."""
    import httpx

    base = f"http://{registry}/v2/{repository}"
    accept = {"Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"}
    try:
        tags = httpx.get(f"{base}/tags/list", timeout=30).json().get("tags") or []
        by_digest: dict[str, set[str]] = {}
        for tag in tags:
            digest = httpx.head(f"{base}/manifests/{tag}", headers=accept, timeout=30).headers.get(
                "Docker-Content-Digest"
            )
            if digest:
                by_digest.setdefault(digest, set()).add(tag)
        for digest, names in by_digest.items():
            if prefix is None or all(t == prefix or t.startswith(prefix + "-") for t in names):
                httpx.delete(f"{base}/manifests/{digest}", timeout=30)
    except httpx.HTTPError:
        pass


@pytest.fixture(scope="session")
def runtime_image(built_images: BuiltImages) -> BuiltImage:
    """The pushed arm64 runtime image (repository@digest via ``.ref``); used by fleet and release tests."""
    return built_images.runtime


@pytest.fixture(scope="session")
def runtime_ref(request: pytest.FixtureRequest) -> str:
    """The runtime image the fleet tests deploy: the one ``built_images`` pushed, or EDGE_TEST_RUNTIME_IMAGE."""
    need(host_ready(), f"host Docker engine, buildx and the registry at {REGISTRY} (scripts/host-setup)")
    return os.environ.get("EDGE_TEST_RUNTIME_IMAGE") or str(request.getfixturevalue("runtime_image").ref)


@pytest.fixture(scope="session")
def fleet_images(runtime_ref: str) -> Iterator[FleetImages]:
    """Small images on the runtime's layers, each built once per session when a test first asks for it;
    their tags are deleted from the registry at the end."""
    images = FleetImages(runtime_ref)
    try:
        yield images
    finally:
        if images.refs:
            print(f"\nfleet test images: {len(images.refs)} built in {images.seconds:.1f} s")
        delete_tags(REGISTRY, REPO_NAME, images.session)
