"""Release flow against an in-memory registry and a fake builder: refusals, tag order, manifest, promote,
verify (moved tag), and "nothing half-tagged" when a push fails. The real registry/cosign/buildx flow is
tests/e2e/test_release.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.images import BuildResult, ImageResult
from edge_deploy.release.manifest import ReleaseError, ReleaseManifest, load_release, save_release
from edge_deploy.release.registry import Manifest, RegistryError, pushed_bytes, split_ref, split_repository
from edge_deploy.release.release import Release, ReleaseOptions
from edge_deploy.release.signing import SigningError
from edge_deploy.release.tags import VersionError

INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE = "application/vnd.oci.image.manifest.v1+json"


class FakeRegistry:
    """The parts of Registry a release uses, in memory."""

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.tags_: dict[tuple[str, str], str] = {}
        self.up = True

    def _check(self) -> None:
        if not self.up:
            raise RegistryError("Registry fake is unreachable while testing (ConnectError).")

    def put(self, name: str, doc: dict[str, Any], media: str, tag: str | None = None) -> str:
        body = json.dumps(doc, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = Manifest(digest, media, body)
        if tag:
            self.tags_[(name, tag)] = digest
        return digest

    def push_image(self, name: str, tag: str, layer: str, size: int) -> str:
        arm = self.put(
            name,
            {
                "config": {"digest": f"sha256:cfg{layer}", "size": 10},
                "layers": [{"digest": f"sha256:{layer}", "size": size}],
            },
            IMAGE,
        )
        return self.put(
            name,
            {"manifests": [{"digest": arm, "platform": {"os": "linux", "architecture": "arm64"}}]},
            INDEX,
            tag,
        )

    def ping(self) -> None:
        self._check()

    def manifest(self, name: str, reference: str) -> Manifest:
        self._check()
        digest = reference if reference.startswith("sha256:") else self.tags_[(name, reference)]
        return self.manifests[digest]

    def resolve(self, name: str, tag: str) -> str | None:
        self._check()
        return self.tags_.get((name, tag))

    def tag(self, name: str, digest: str, tag: str) -> None:
        self._check()
        assert digest in self.manifests
        self.tags_[(name, tag)] = digest

    def blobs(self, name: str, reference: str) -> dict[str, int]:
        doc = self.manifest(name, reference).json
        out: dict[str, int] = {}
        for child in doc.get("manifests") or []:
            out.update(self.blobs(name, child["digest"]))
        for b in [doc.get("config") or {}, *(doc.get("layers") or [])]:
            if b.get("digest"):
                out[b["digest"]] = b["size"]
        return out

    def repository_blobs(self, name: str) -> set[str]:
        found: set[str] = set()
        for n, tag in list(self.tags_):
            if n == name:
                found.update(self.blobs(name, tag))
        return found

    def tags_of(self, name: str) -> dict[str, str]:
        return {t: d for (n, t), d in self.tags_.items() if n == name}


class FakeBuilder:
    """Pushes two images under the build tag (from the bake overrides), like build_images(push=True)."""

    def __init__(self, reg: FakeRegistry, fail_on: str | None = None) -> None:
        self.reg, self.fail_on, self.calls = reg, fail_on, []  # type: ignore[var-annotated]

    def __call__(self, **kw: Any) -> BuildResult:
        self.calls.append(kw)
        images = {}
        for override in kw["overrides"]:
            target, _, value = override.partition(".tags=")
            if not value:
                continue
            repo, tag = split_ref(value)
            if target == self.fail_on:
                raise ReleaseError(f"docker buildx bake failed: pushing {repo} was refused.")
            layer = hashlib.sha256(f"{target}{kw['model']}{kw['version']}".encode()).hexdigest()
            digest = self.reg.push_image(split_repository(repo)[1], tag, layer, 1000)
            images[target] = ImageResult(target, tags=[value], digest=digest, size_bytes=1000)
        return BuildResult(
            images, bundle_sha256="ab" * 32, precision=kw["precision"], ros2=False, variables={}
        )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "README.md").write_text("x\n")
    (r / "model").mkdir()
    (r / "model" / "policy.pt").write_bytes(b"m")
    git(r, "add", ".")
    git(r, "commit", "-qm", "init")
    return r


@pytest.fixture()
def reg() -> FakeRegistry:
    return FakeRegistry()


def make(repo: Path, reg: FakeRegistry, builder: FakeBuilder | None = None) -> Release:
    return Release(repo, builder=builder or FakeBuilder(reg), registry_for=lambda host: reg)  # type: ignore[arg-type,return-value]


def opts(repo: Path, version: str, **kw: Any) -> ReleaseOptions:
    return ReleaseOptions(version=version, model_dir=repo / "model", **kw)


def test_release_records_digests_moves_tags_and_tags_git(repo: Path, reg: FakeRegistry) -> None:
    m = make(repo, reg).create(opts(repo, "0.1.0"))
    saved = load_release("0.1.0", repo / "releases")
    assert saved.runtime.ref == m.runtime.ref
    assert saved.runtime.platforms == {
        "linux/arm64": reg.manifest("edge-deploy/runtime", m.runtime.digest).json["manifests"][0]["digest"]
    }
    sha = git(repo, "rev-parse", "HEAD")
    for name in ("converter", "runtime"):
        tags = reg.tags_of(f"edge-deploy/{name}")
        for t in ("0.1.0", "0.1", "0", "latest", "stable", f"sha-{sha[:7]}"):
            assert tags[t] == m.images[name].digest
    assert saved.pushed_bytes == 2 * (1000 + 10)
    assert git(repo, "cat-file", "-t", "v0.1.0") == "tag"  # annotated
    assert git(repo, "rev-parse", "v0.1.0^{commit}") == sha
    assert saved.ros2 is False and "ros2" not in saved.extra  # what a rollout with ROS 2 checks


def test_prerelease_leaves_latest_on_last_stable(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    first = rel.create(opts(repo, "0.1.0"))
    rc = rel.create(opts(repo, "0.2.0-rc.1"))
    tags = reg.tags_of("edge-deploy/runtime")
    assert tags["latest"] == tags["0"] == tags["stable"] == first.runtime.digest
    assert tags["0.2.0-rc.1"] == tags["beta"] == rc.runtime.digest
    assert "0.2" not in tags
    assert rc.channels == ["beta"]


def test_existing_version_is_refused_unless_forced(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    rel.create(opts(repo, "0.1.0"))
    with pytest.raises(ReleaseError, match=r"Version 0.1.0 is already released .*`force`") as refused:
        rel.create(opts(repo, "0.1.0"))
    assert refused.value.options == ("force",)  # the CLI spells it as its own flag
    again = rel.create(opts(repo, "0.1.0", force=True))
    assert load_release("0.1.0", repo / "releases").created == again.created


def test_dirty_tree_is_refused_but_release_manifests_do_not_count(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    rel.create(opts(repo, "0.1.0"))  # leaves releases/0.1.0.json untracked
    (repo / "README.md").write_text("changed\n")
    with pytest.raises(ReleaseError, match=r"uncommitted changes \(README.md\)"):
        rel.create(opts(repo, "0.1.1"))
    assert not (repo / "releases" / "0.1.1.json").exists()


def test_the_tool_s_own_working_directory_does_not_make_the_tree_dirty(
    repo: Path, reg: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release run in the project leaves its working files in ./.edge (EDGE_DEPLOY_HOME unset): the next
    release must not see them as uncommitted changes; anything else still counts."""
    monkeypatch.delenv("EDGE_DEPLOY_HOME", raising=False)
    monkeypatch.chdir(repo)
    rel = make(repo, reg)
    (repo / ".edge" / "wheelhouse").mkdir(parents=True)
    (repo / ".edge" / "wheelhouse" / "x.whl").write_bytes(b"")
    rel.create(opts(repo, "0.1.0"))
    monkeypatch.chdir(repo.parent)  # a later run from elsewhere: the project's .edge still is the tool's
    rel.create(opts(repo, "0.1.1"))
    (repo / "notes.txt").write_text("draft\n")
    with pytest.raises(ReleaseError, match=r"uncommitted changes \(notes.txt\)"):
        rel.create(opts(repo, "0.1.2"))


def test_non_semver_is_refused_before_anything_happens(repo: Path, reg: FakeRegistry) -> None:
    builder = FakeBuilder(reg)
    with pytest.raises(VersionError, match="not a semantic version"):
        make(repo, reg, builder).create(opts(repo, "0.1"))
    assert builder.calls == [] and reg.tags_ == {}


def test_registry_unreachable_builds_nothing_and_tags_nothing(repo: Path, reg: FakeRegistry) -> None:
    reg.up = False
    builder = FakeBuilder(reg)
    with pytest.raises(RegistryError, match="unreachable"):
        make(repo, reg, builder).create(opts(repo, "0.1.0"))
    assert builder.calls == [] and reg.tags_ == {}
    assert not (repo / "releases").exists()
    assert git(repo, "tag") == ""


def test_failed_push_leaves_nothing_half_tagged(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    first = rel.create(opts(repo, "0.1.0"))
    with pytest.raises(ReleaseError, match="refused"):
        make(repo, reg, FakeBuilder(reg, fail_on="runtime")).create(opts(repo, "0.1.1"))
    for name in ("converter", "runtime"):
        tags = reg.tags_of(f"edge-deploy/{name}")
        assert "0.1.1" not in tags
        assert tags["latest"] == tags["0.1"] == first.images[name].digest
    assert not (repo / "releases" / "0.1.1.json").exists()
    assert "v0.1.1" not in git(repo, "tag")


def test_missing_signing_key_fails_before_tags_move(repo: Path, reg: FakeRegistry) -> None:
    with pytest.raises(SigningError, match=r"Signing key .*missing.key does not exist"):
        make(repo, reg).create(opts(repo, "0.1.0", key=repo / "missing.key"))
    assert [t for (_, t) in reg.tags_ if not t.startswith("build-")] == []


def test_promote_retags_by_digest_without_building(repo: Path, reg: FakeRegistry) -> None:
    builder = FakeBuilder(reg)
    rel = make(repo, reg, builder)
    rel.create(opts(repo, "0.1.0"))
    rc = rel.create(opts(repo, "0.2.0-rc.1"))
    calls = len(builder.calls)
    promoted = rel.promote("0.2.0-rc.1", "stable")
    assert len(builder.calls) == calls
    assert reg.tags_of("edge-deploy/runtime")["stable"] == rc.runtime.digest
    assert promoted.channels == ["beta", "stable"]
    assert load_release("0.1.0", repo / "releases").channels == []


def test_verify_detects_a_moved_tag_naming_both_digests(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    a = rel.create(opts(repo, "0.1.0"))
    (repo / "model" / "policy.pt").write_bytes(b"m2")
    b = rel.create(opts(repo, "0.1.1", model="policy.pt", force=True))
    assert rel.verify("0.1.0", None)["images"]["runtime"]["ref"] == a.runtime.ref
    reg.tag("edge-deploy/runtime", b.runtime.digest, "0.1.0")
    with pytest.raises(ReleaseError) as exc:
        rel.verify("0.1.0", None)
    assert a.runtime.digest in str(exc.value) and b.runtime.digest in str(exc.value)


def test_reuse_pinned_digests(repo: Path, reg: FakeRegistry) -> None:
    conv = reg.push_image("edge-deploy/converter", "x", "c1", 5)
    run = reg.push_image("edge-deploy/runtime", "x", "r1", 7)
    builder = FakeBuilder(reg)
    m = make(repo, reg, builder).create(
        ReleaseOptions(
            version="1.0.0",
            reuse={
                "converter": f"localhost:5000/edge-deploy/converter@{conv}",
                "runtime": f"localhost:5000/edge-deploy/runtime@{run}",
            },
        )
    )
    assert builder.calls == []
    assert m.runtime.digest == run and list(m.runtime.platforms) == ["linux/arm64"]
    assert m.pushed_bytes == 0  # already in the registry before the release


def test_pushed_bytes_counts_only_new_blobs() -> None:
    assert pushed_bytes({"sha256:a"}, {"sha256:a": 5, "sha256:b": 7}) == 7


def test_split_repository_needs_a_host() -> None:
    assert split_repository("localhost:5000/edge-deploy/runtime") == ("localhost:5000", "edge-deploy/runtime")
    with pytest.raises(RegistryError, match="does not name a registry host"):
        split_repository("edge-deploy/runtime")


def test_default_channel_only_moves_forward(repo: Path, reg: FakeRegistry) -> None:
    rel = make(repo, reg)
    rel.create(opts(repo, "0.2.0"))
    new = rel.create(opts(repo, "0.2.1-rc.1"))
    hotfix = rel.create(opts(repo, "0.1.9"))
    old_rc = rel.create(opts(repo, "0.2.0-rc.9"))
    tags = reg.tags_of("edge-deploy/runtime")
    assert tags["stable"] == tags["latest"] != hotfix.runtime.digest
    assert tags["beta"] == new.runtime.digest != old_rc.runtime.digest
    assert hotfix.channels == [] and old_rc.channels == []
    assert rel.create(opts(repo, "0.1.8", channel="stable")).channels == ["stable"]  # explicit: moves
    assert load_release("0.2.0", repo / "releases").channels == []


def test_a_release_of_an_image_built_elsewhere_is_pinned_by_digest(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    m = ReleaseManifest.for_runtime_image("0.9.0", f"localhost:5000/team/runtime@{digest}")
    assert m.runtime.ref == f"localhost:5000/team/runtime@{digest}"
    save_release(m, tmp_path)
    assert load_release("0.9.0", tmp_path).runtime.digest == digest
    with pytest.raises(ReleaseError, match="not pinned by digest"):
        ReleaseManifest.for_runtime_image("0.9.1", "localhost:5000/team/runtime:latest")


def test_runtime_ros2_support_follows_the_device_extra(tmp_path: Path) -> None:
    from edge_deploy.images import tool_files
    from edge_deploy.images.wheelhouse import runtime_has_ros2

    def pyproject(device: str) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(
            '[project]\nname = "edge-deploy"\ndependencies = ["numpy>=1.24"]\n'
            f'[project.optional-dependencies]\nros2 = ["cyclonedds>=11,<12"]\ndevice = [{device}]\n'
        )
        return path

    assert runtime_has_ros2(pyproject('"onnxruntime>=1.17"')) is False
    assert runtime_has_ros2(pyproject('"onnxruntime>=1.17", "edge-deploy[ros2]"')) is True
    # the checkout's runtime Dockerfile compiles Cyclone DDS 0.10 and the binding in its ros2 stage
    assert runtime_has_ros2(tool_files().path("pyproject.toml")) is True


def test_release_records_the_backend_robots_must_serve_it_with(repo: Path, reg: FakeRegistry) -> None:
    """``release create --required-backend`` ends up in the manifest the rollout's health gate reads."""
    make(repo, reg).create(opts(repo, "0.1.0", required_backend="any"))
    assert load_release("0.1.0", repo / "releases").required_backend == "any"
    make(repo, reg).create(opts(repo, "0.1.1"))
    assert load_release("0.1.1", repo / "releases").required_backend is None  # the inventory decides
