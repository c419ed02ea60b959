"""Releases against the real local registry, real buildx bake and real cosign (issue 6 "Done when"):
0.1.0, then 0.1.1 with only the model changed, then 0.2.0-rc.1; tags resolve to the recorded digests,
``latest`` stays on 0.1.1, signatures verify, a moved tag is detected (and put back: no test depends on
the order). Everything happens in a temporary git repository (a copy of what the build needs) and under a
per-session image prefix, so /work/main is never tagged or dirtied and reruns do not see each other's
tags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.release.manifest import ReleaseError, ReleaseManifest, load_release
from edge_deploy.release.registry import Registry, RegistryError
from edge_deploy.release.release import Release, ReleaseOptions
from edge_deploy.release.signing import SigningError, generate_key_pair, sign_image, verify_image
from tests.e2e.conftest import STANDIN, STANDIN_PYTHON, delete_tags
from tests.e2e.test_images import registry_get
from tests.support import need_tool

ROOT = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ["pyproject.toml", "README.md", ".dockerignore", "docker", "build", "runtime", "compose"]
PASSWORD = "e2e-cosign-password"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=e2e", "-c", "user.email=e2e@localhost", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@dataclass
class Released:
    repo: Path
    release: Release
    prefix: str
    registry: Registry
    pub: Path
    key: Path
    manifests: dict[str, ReleaseManifest]


def _copy_checkout(dest: Path) -> None:
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for item in BUILD_INPUTS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / item)
    git(dest, "init", "-q")
    git(dest, "add", ".")
    git(dest, "commit", "-qm", "release e2e checkout")


def _changed_model(src: Path, dest: Path) -> None:
    """The same policy with one weight nudged: only the model changes between 0.1.0 and 0.1.1."""
    import torch

    dest.mkdir()
    module = torch.jit.load(str(src / "policy.pt"))
    with torch.no_grad():
        next(iter(module.parameters())).add_(0.01)
    torch.jit.save(module, str(dest / "policy.pt"))


@pytest.fixture(scope="module")
def released(
    docker_host: str, sample_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Released]:
    need_tool("cosign")
    tmp = tmp_path_factory.mktemp("release")
    repo = tmp / "checkout"
    _copy_checkout(repo)
    key, pub = generate_key_pair(tmp / "keys", PASSWORD)
    model2 = tmp / "model2"
    _changed_model(sample_model_dir, model2)
    prefix = f"edge-deploy-e2e-{uuid.uuid4().hex[:8]}"
    rel = Release(repo)
    common: dict[str, Any] = dict(
        registry=docker_host,
        image_prefix=prefix,
        l4t_base=STANDIN,
        converter_base=STANDIN,
        runtime_python=STANDIN_PYTHON,
        key=key,
    )
    old_password = os.environ.get("COSIGN_PASSWORD")
    os.environ["COSIGN_PASSWORD"] = PASSWORD
    manifests = {
        "0.1.0": rel.create(ReleaseOptions(version="0.1.0", model_dir=sample_model_dir, **common)),
        "0.1.1": rel.create(ReleaseOptions(version="0.1.1", model_dir=model2, **common)),
    }
    # The pre-release goes through the command line, as a person or release.yml would run it.
    cli = subprocess.run(
        [
            str(ROOT / ".venv/bin/edge-deploy"),
            "release",
            "create",
            "0.2.0-rc.1",
            "--model",
            str(model2 / "policy.pt"),
            "--registry",
            docker_host,
            "--prefix",
            prefix,
            "--l4t-base",
            STANDIN,
            "--converter-base",
            STANDIN,
            "--runtime-python",
            STANDIN_PYTHON,
            "--key",
            str(key),
            "--json",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    manifests["0.2.0-rc.1"] = ReleaseManifest.from_dict(json.loads(cli.stdout))
    for v, m in manifests.items():
        print(f"release {v}: pushed {m.pushed_bytes} bytes {m.extra.get('pushed_bytes_per_image')}")
    try:
        yield Released(repo, rel, prefix, Registry(docker_host), pub, key, manifests)
    finally:
        if old_password is None:
            os.environ.pop("COSIGN_PASSWORD", None)
        else:
            os.environ["COSIGN_PASSWORD"] = old_password
        for name in ("converter", "runtime"):  # this run's repositories: tags, signatures, attestations
            delete_tags(docker_host, f"{prefix}/{name}", None)


def test_tags_resolve_to_recorded_digests(released: Released) -> None:
    reg = released.registry
    for version, m in released.manifests.items():
        for name, img in m.images.items():
            repo_name = f"{released.prefix}/{name}"
            assert img.repository.endswith(repo_name)
            assert reg.resolve(repo_name, version) == img.digest
            assert img.platforms, f"{name} {version} records no platform digests"
            assert set(img.platforms) == ({"linux/amd64"} if name == "converter" else {"linux/arm64"})
    latest = released.manifests["0.1.1"]
    for name, img in latest.images.items():
        repo_name = f"{released.prefix}/{name}"
        assert reg.resolve(repo_name, "latest") == img.digest
        assert reg.resolve(repo_name, "0") == img.digest
        assert reg.resolve(repo_name, "0.1") == img.digest
        assert reg.resolve(repo_name, "stable") == img.digest
        assert reg.resolve(repo_name, "beta") == released.manifests["0.2.0-rc.1"].images[name].digest
        assert reg.resolve(repo_name, "0.2") is None


def test_provenance_attestation_is_attached(released: Released) -> None:
    m = released.manifests["0.1.1"]
    index = released.registry.manifest(f"{released.prefix}/runtime", m.runtime.digest).json
    kinds = [(d.get("annotations") or {}).get("vnd.docker.reference.type") for d in index["manifests"]]
    assert "attestation-manifest" in kinds
    assert m.extra["provenance"] is True


def test_model_only_release_changes_runtime_and_little_else(released: Released) -> None:
    a, b = released.manifests["0.1.0"], released.manifests["0.1.1"]
    assert a.bundle_sha256 and b.bundle_sha256 and a.bundle_sha256 != b.bundle_sha256
    assert a.runtime.digest != b.runtime.digest
    assert b.pushed_bytes is not None and a.pushed_bytes is not None
    assert b.pushed_bytes < a.pushed_bytes  # only the model layer (+ config, attestations) is new


def test_manifests_are_written_and_git_tags_annotated(released: Released) -> None:
    for version, m in released.manifests.items():
        saved = load_release(version, released.repo / "releases")
        assert saved.runtime.ref == m.runtime.ref and saved.git_sha == git(released.repo, "rev-parse", "HEAD")
        assert git(released.repo, "cat-file", "-t", f"v{version}") == "tag"
        assert saved.runtime.signature and saved.runtime.signature.endswith(".sig")
        # The image says which commit it was built from: the released checkout's.
        child = registry_get(m.runtime.repository, m.runtime.platforms["linux/arm64"])
        cfg = registry_get(m.runtime.repository, child["config"]["digest"], "blobs")
        assert cfg["config"]["Labels"]["org.opencontainers.image.revision"] == saved.git_sha
        assert cfg["config"]["Labels"]["org.opencontainers.image.version"] == version
        assert saved.ros2 is True  # the runtime Dockerfile builds Cyclone DDS 0.10: rollout --ros2 accepts it


def test_signatures_verify(released: Released) -> None:
    for version in released.manifests:
        report = released.release.verify(version, released.pub)
        assert all(r["signature_verified"] for r in report["images"].values())


def test_version_already_released_is_refused(released: Released) -> None:
    with pytest.raises(ReleaseError, match="already released"):
        released.release.create(
            ReleaseOptions(
                version="0.1.0", model_dir=released.repo, key=released.key, image_prefix=released.prefix
            )
        )


def test_wrong_password_and_missing_key(released: Released, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = released.manifests["0.1.0"].runtime.ref
    monkeypatch.setenv("COSIGN_PASSWORD", "not-the-password")
    with pytest.raises(SigningError, match="could not be decrypted: COSIGN_PASSWORD is wrong"):
        sign_image(ref, released.key)
    with pytest.raises(SigningError, match="does not exist"):
        sign_image(ref, released.key.parent / "absent.key")


def test_registry_unreachable_leaves_nothing(released: Released) -> None:
    before = git(released.repo, "tag")
    with pytest.raises(RegistryError, match=r"Registry 127\.0\.0\.1:9 is unreachable"):
        released.release.create(
            ReleaseOptions(
                version="0.3.0",
                model_dir=released.repo,
                key=released.key,
                registry="127.0.0.1:9",
                image_prefix=released.prefix,
            )
        )
    assert git(released.repo, "tag") == before
    assert not (released.repo / "releases" / "0.3.0.json").exists()
    assert released.registry.resolve(f"{released.prefix}/runtime", "0.3.0") is None


def test_promote_retags_by_digest(released: Released) -> None:
    rc = released.manifests["0.2.0-rc.1"]
    tag_count = len(released.registry.tags(f"{released.prefix}/runtime"))
    released.release.promote("0.2.0-rc.1", "beta")
    assert released.registry.resolve(f"{released.prefix}/runtime", "beta") == rc.runtime.digest
    assert len(released.registry.tags(f"{released.prefix}/runtime")) == tag_count


@pytest.fixture
def moved_tag(released: Released) -> Iterator[None]:
    """0.1.0's runtime tag moved onto 0.1.1's image for one test, put back afterwards."""
    a, b = released.manifests["0.1.0"].runtime, released.manifests["0.1.1"].runtime
    released.registry.tag(f"{released.prefix}/runtime", b.digest, "0.1.0")
    try:
        yield
    finally:
        released.registry.tag(f"{released.prefix}/runtime", a.digest, "0.1.0")


@pytest.mark.usefixtures("moved_tag")
def test_moved_tag_is_refused_naming_both_digests(released: Released) -> None:
    a, b = released.manifests["0.1.0"].runtime, released.manifests["0.1.1"].runtime
    with pytest.raises(ReleaseError) as exc:
        released.release.verify("0.1.0", released.pub)
    assert a.digest in str(exc.value) and b.digest in str(exc.value)
    verify_image(a.ref, released.pub)  # the recorded digest itself is still signed
    show = subprocess.run(
        [str(ROOT / ".venv/bin/edge-deploy"), "release", "verify", "0.1.0", "--key", str(released.pub)],
        cwd=released.repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode != 0 and "was moved" in show.stderr and "Traceback" not in show.stderr
    listed = subprocess.run(
        [str(ROOT / ".venv/bin/edge-deploy"), "release", "list", "--json"],
        cwd=released.repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert [r["version"] for r in json.loads(listed.stdout)] == ["0.1.0", "0.1.1", "0.2.0-rc.1"]
