"""Making a release: build and push both images, sign their digests, move tags, write the manifest,
tag git. The order makes failure safe: images are pushed under a private build tag first, and the
version, floating and channel tags move only after every push and signature succeeded.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_deploy.images import BuildResult, ModelSet
import contextlib

from edge_deploy.release.manifest import (
    ReleaseError,
    ReleaseImage,
    ReleaseManifest,
    ReleaseModel,
    list_releases,
    load_release,
    manifest_path,
    save_release,
)
from edge_deploy.release.registry import Registry, pushed_bytes, split_ref, split_repository
from edge_deploy.release.signing import sign_image, verify_image
from edge_deploy.release.tags import (
    check_channel,
    compute_tags,
    default_channel,
    normalize_version,
    parse_version,
)
from edge_runtime.jetpack import default_release

log = logging.getLogger(__name__)

IMAGES = ("converter", "runtime")
# The base a release records when none is given: the JetPack table's default row (what the build uses).
DEFAULT_L4T_BASE = str(default_release().base_image)


@dataclass
class ReleaseOptions:
    """What to release; mirrors ``edge-deploy release`` options."""

    version: str
    model_dir: Path | None = None
    model: str = "policy.pt"
    precision: str = "fp16"
    calibration: str = ""
    channel: str | None = None  # None: beta for pre-releases, stable otherwise
    push: bool = True
    force: bool = False
    registry: str = "localhost:5000"
    image_prefix: str = "edge-deploy"
    l4t_base: str | None = None
    converter_base: str | None = None
    runtime_python: str | None = None
    runtime_platforms: str = "linux/arm64"
    key: Path | str | None = None  # cosign key file or reference, or "keyless"; None: do not sign
    provenance: bool = True  # buildx provenance attestation (mode=max)
    sbom: bool = False  # needs docker/buildkit-syft-scanner, which our offline builders cannot pull
    reuse: dict[str, str] = field(default_factory=dict)  # image name → repository@digest (skip building)
    git_tag: bool = True
    required_backend: str | None = None  # manifest.REQUIRED_BACKENDS; None: the robots' inventory decides
    models: ModelSet | None = None  # several models, each its own layer (instead of model_dir and model)


BuildFn = Callable[..., "BuildResult"]


def _default_builder(**kwargs: Any) -> BuildResult:
    from edge_deploy.images import build_images

    return build_images(**kwargs)


class Release:
    """Releases of one repository checkout (``repo_root``), recorded in ``repo_root/releases``."""

    def __init__(
        self,
        repo_root: Path,
        *,
        releases_dir: Path | None = None,
        builder: BuildFn | None = None,
        registry_for: Callable[[str], Registry] = Registry,
        on_step: Callable[[str], None] = lambda s: None,
    ) -> None:
        self.repo_root = repo_root.resolve()
        self.releases_dir = releases_dir or self.repo_root / "releases"
        self.builder = builder or _default_builder
        self.registry_for = registry_for
        self.on_step = on_step

    # --- git -------------------------------------------------------------------------------------
    def _git(self, *args: str, check: bool = True, strip: bool = True) -> str:
        proc = subprocess.run(
            ["git", "-C", str(self.repo_root), *args], text=True, capture_output=True, check=False
        )
        if check and proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise ReleaseError(f"git {args[0]} failed in {self.repo_root}: {msg}")
        return proc.stdout.strip() if strip else proc.stdout

    def git_sha(self) -> str:
        return self._git("rev-parse", "HEAD")

    def dirty_paths(self) -> list[str]:
        """Changed or untracked paths, except what this tool writes: the release manifests and its working
        directory (``EDGE_DEPLOY_HOME``, by default ``.edge`` where it runs, as in the project's root)."""
        from edge_deploy.images.files import work_dir

        out = self._git("status", "--porcelain", "--untracked-files=normal", strip=False)
        ignored = []
        for own in (self.releases_dir, work_dir(), self.repo_root / ".edge"):
            with contextlib.suppress(ValueError):
                ignored.append(own.resolve().relative_to(self.repo_root.resolve()).as_posix() + "/")
        paths = [line[3:] for line in out.splitlines() if line.strip()]
        return [p for p in paths if not any((p + "/").startswith(i) for i in ignored)]

    def git_tag_target(self, version: str) -> str | None:
        out = self._git("rev-parse", "-q", "--verify", f"refs/tags/v{version}^{{commit}}", check=False)
        return out or None

    def _create_git_tag(self, version: str, force: bool) -> None:
        ident: list[str] = []
        if not self._git("config", "user.email", check=False):
            ident = ["-c", "user.name=edge-deploy", "-c", "user.email=edge-deploy@localhost"]
        args = [*ident, "tag", "-a", f"v{version}", "-m", f"edge-deploy {version}"]
        self._git(*args, *(["-f"] if force else []))

    # --- release ---------------------------------------------------------------------------------
    def released_versions(self) -> list[str]:
        return [m.version for m in list_releases(self.releases_dir)]

    def channel_for(
        self, version: str, explicit: str | None, released: list[str] | None = None
    ) -> str | None:
        """An explicit ``--channel`` always moves; the default channel (beta for pre-releases, else stable)
        only moves forward, like ``latest``: a 0.1.2 hotfix after 0.2.0 does not take ``stable`` back."""
        if explicit is not None:
            return check_channel(explicit)
        channel = default_channel(version)
        v = parse_version(version).replace(build=None)
        others = [
            parse_version(r).replace(build=None)
            for r in (self.released_versions() if released is None else released)
        ]
        if channel == "stable":
            others = [o for o in others if o.prerelease is None]
        return channel if all(v >= o for o in others) else None

    def check(self, opts: ReleaseOptions) -> str:
        """Refuse what must not be released; return the normalized version."""
        version = normalize_version(opts.version)
        if opts.channel is not None:
            check_channel(opts.channel)
        if not opts.force:
            if manifest_path(version, self.releases_dir).exists():
                raise ReleaseError(
                    f"Version {version} is already released "
                    f"({manifest_path(version, self.releases_dir)}); use `force` to redo it.",
                    option="force",
                )
            target = self.git_tag_target(version)
            if target is not None and target != self.git_sha():
                raise ReleaseError(
                    f"Git tag v{version} already exists on another commit ({target[:12]}); "
                    "use `force` to move it.",
                    option="force",
                )
            dirty = self.dirty_paths()
            if dirty:
                shown = ", ".join(dirty[:3]) + (" …" if len(dirty) > 3 else "")
                raise ReleaseError(
                    f"The git tree has uncommitted changes ({shown}); commit them or use `force`.",
                    option="force",
                )
        if opts.model_dir is not None and opts.models is not None:
            raise ReleaseError("A release has one model or several models each with a name, not both.")
        if opts.model_dir is None and opts.models is None and set(opts.reuse) != set(IMAGES):
            raise ReleaseError("A release needs a model directory (or prebuilt digests of both images).")
        return version

    def create(self, opts: ReleaseOptions) -> ReleaseManifest:
        if not opts.push:
            raise ReleaseError("A release pushes its images; use dry_run() to build without pushing.")
        version = self.check(opts)
        sha = self.git_sha()
        released = self.released_versions()  # the manifests are read once per release
        channel = self.channel_for(version, opts.channel, released)
        registry = self.registry_for(opts.registry)
        self.on_step(f"checking registry {opts.registry}")
        registry.ping()
        before: dict[str, set[str]] = {}
        for n in IMAGES:
            repo_name = split_repository(opts.reuse.get(n) or f"{opts.registry}/{opts.image_prefix}/{n}")[1]
            before[n] = registry.repository_blobs(repo_name.split("@")[0])
        plan = compute_tags(version, released=[*released, version], git_sha=sha, channel=channel)
        build_tag = f"build-{version.replace('+', '-')}-{sha[:7]}"
        images, extra = self._build(opts, version, build_tag, registry)

        pushed = {
            n: pushed_bytes(before[n], registry.blobs(split_repository(img.repository)[1], img.digest))
            for n, img in images.items()
        }
        total_pushed = sum(pushed.values())

        if opts.key is not None:
            for name, img in images.items():
                self.on_step(f"signing {name} {img.digest[:19]}")
                img.signature = sign_image(img.ref, opts.key)

        # Every push and signature succeeded: now (and only now) tags move.
        for name, img in images.items():
            repo_name = split_repository(img.repository)[1]
            for tag in plan.all:
                self.on_step(f"tagging {name}:{tag}")
                registry.tag(repo_name, img.digest, tag)
            img.tags = plan.all

        manifest = ReleaseManifest(
            version=version,
            git_sha=sha,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            images=images,
            bundle_sha256=str(extra.pop("bundle_sha256", "")),
            precision=str(extra.pop("precision", opts.precision)),
            base_image=opts.l4t_base or DEFAULT_L4T_BASE,
            channels=[channel] if channel else [],
            pushed_bytes=total_pushed,
            required_backend=opts.required_backend,
            ros2=extra.pop("ros2", None),  # None: images reused from another build say nothing about it
            models=[ReleaseModel(**m) for m in extra.pop("models", [])],
            extra={
                **extra,
                "pushed_bytes_per_image": pushed,
                "floating_tags": plan.floating,
                "build_tag": build_tag,
                "provenance": opts.provenance,
                "sbom": opts.sbom,
            },
        )
        if channel:
            self._drop_channel_elsewhere(version, channel)
        path = save_release(manifest, self.releases_dir)
        self.on_step(f"wrote {path}")
        if opts.git_tag and self.git_tag_target(version) != sha:
            self._create_git_tag(version, opts.force)
        return manifest

    def dry_run(self, opts: ReleaseOptions) -> dict[str, Any]:
        """Checks, tag plan and a local build (no push, no tags, no manifest): ``--no-push``."""
        version = self.check(opts)
        sha = self.git_sha()
        released = self.released_versions()
        channel = self.channel_for(version, opts.channel, released)
        plan = compute_tags(version, released=[*released, version], git_sha=sha, channel=channel)
        built: dict[str, Any] = {}
        if (opts.model_dir is not None or opts.models is not None) and not opts.reuse:
            no_push = ReleaseOptions(**{**opts.__dict__, "push": False, "provenance": False, "sbom": False})
            build_tag = f"build-{version.replace('+', '-')}-{sha[:7]}"
            _, built = self._build(no_push, version, build_tag, self.registry_for(opts.registry))
        return {"version": version, "git_sha": sha, "channel": channel, "tags": plan.all, **built}

    def _build(
        self, opts: ReleaseOptions, version: str, build_tag: str, registry: Registry
    ) -> tuple[dict[str, ReleaseImage], dict[str, Any]]:
        images: dict[str, ReleaseImage] = {}
        extra: dict[str, Any] = {}
        for name, ref in opts.reuse.items():
            repository, digest = split_ref(ref)
            if not digest.startswith("sha256:"):
                raise ReleaseError(f"Reused image {ref!r} is not pinned by digest.")
            images[name] = ReleaseImage(
                repository=repository, digest=digest, platforms=self._platforms(registry, repository, digest)
            )
        todo = [n for n in IMAGES if n not in images]
        if not todo:
            return images, extra
        if todo != list(IMAGES):
            raise ReleaseError("Reuse digests of both images or of neither (they are built together).")
        assert opts.model_dir is not None or opts.models is not None
        overrides = [f"{n}.tags={opts.registry}/{opts.image_prefix}/{n}:{build_tag}" for n in IMAGES]
        if opts.provenance:
            overrides += [f"{n}.attest=type=provenance,mode=max" for n in IMAGES]
        if opts.sbom:
            overrides += [f"{n}.attest=type=sbom" for n in IMAGES]
        self.on_step("building and pushing converter + runtime (bake)")
        result = self.builder(
            model_dir=opts.model_dir,
            model=opts.model if opts.models is None else "",
            models=opts.models,
            precision=opts.precision,
            calibration=opts.calibration,
            version=version,
            registry=opts.registry,
            image_prefix=opts.image_prefix,
            l4t_base=opts.l4t_base,
            converter_base=opts.converter_base,
            runtime_python=opts.runtime_python,
            runtime_platforms=opts.runtime_platforms,
            push=opts.push,
            overrides=overrides,
            progress="quiet",
            on_step=self.on_step,
            revision=self.git_sha(),  # the images are built from the tool's files, labelled with this commit
        )
        for name in IMAGES:
            r = result.images[name]
            if opts.push and not r.digest:
                raise ReleaseError(f"The {name} image was built but bake reported no pushed digest.")
            repository = f"{opts.registry}/{opts.image_prefix}/{name}"
            digest = r.digest or ""
            platforms = dict(r.platforms)
            if digest and not platforms:
                platforms = self._platforms(registry, repository, digest)
            images[name] = ReleaseImage(
                repository=repository,
                digest=digest,
                platforms=platforms,
                size_bytes=r.size_bytes,
            )
        extra["bundle_sha256"] = result.bundle_sha256
        extra["precision"] = result.precision or opts.precision
        extra["ros2"] = result.ros2  # the manifest's ros2: whether the runtime image can serve ROS 2
        extra["models"] = [dict(m) for m in result.models]  # several models: each one's bundle
        return images, extra

    @staticmethod
    def _platforms(registry: Registry, repository: str, digest: str) -> dict[str, str]:
        doc = registry.manifest(split_repository(repository)[1], digest).json
        out: dict[str, str] = {}
        for m in doc.get("manifests") or []:
            plat = m.get("platform") or {}
            if plat.get("os") in (None, "unknown"):
                continue
            name = f"{plat['os']}/{plat['architecture']}" + (
                f"/{plat['variant']}" if plat.get("variant") else ""
            )
            out[name] = m["digest"]
        return out

    def _drop_channel_elsewhere(self, version: str, channel: str) -> None:
        """A channel tag points at one release; keep the other manifests' ``channels`` truthful."""
        for m in list_releases(self.releases_dir):
            if m.version != version and channel in m.channels:
                m.channels = [c for c in m.channels if c != channel]
                save_release(m, self.releases_dir)

    # --- after a release -------------------------------------------------------------------------
    def promote(self, version: str, channel: str) -> ReleaseManifest:
        """Point ``channel`` at the release's digests (no rebuild), and record it."""
        check_channel(channel)
        manifest = load_release(normalize_version(version), self.releases_dir)
        for name, img in manifest.images.items():
            host, repo_name = split_repository(img.repository)
            self.on_step(f"tagging {name}@{img.digest[:19]} as {channel}")
            self.registry_for(host).tag(repo_name, img.digest, channel)
        self._drop_channel_elsewhere(manifest.version, channel)
        if channel not in manifest.channels:
            manifest.channels.append(channel)
        save_release(manifest, self.releases_dir)
        return manifest

    def verify(self, version: str, public_key: Path | None) -> dict[str, Any]:
        """Check each image's version tag still points at the recorded digest, then its signature."""
        manifest = load_release(normalize_version(version), self.releases_dir)
        version_tag = manifest.version.replace("+", "-")
        report: dict[str, Any] = {"version": manifest.version, "images": {}}
        for name, img in manifest.images.items():
            host, repo_name = split_repository(img.repository)
            current = self.registry_for(host).resolve(repo_name, version_tag)
            if current is None:
                raise ReleaseError(
                    f"Tag {img.repository}:{version_tag} no longer exists "
                    f"(release {manifest.version} recorded {img.digest})."
                )
            if current != img.digest:
                raise ReleaseError(
                    f"Tag {img.repository}:{version_tag} was moved: it points to {current}, "
                    f"but release {manifest.version} recorded and signed {img.digest}."
                )
            signed = public_key is not None
            if signed:
                assert public_key is not None
                verify_image(img.ref, public_key)
            report["images"][name] = {
                "ref": img.ref,
                "tag": f"{img.repository}:{version_tag}",
                "signature_verified": signed,
            }
        return report


def sorted_releases(releases_dir: Path) -> list[ReleaseManifest]:
    return sorted(list_releases(releases_dir), key=lambda m: parse_version(m.version))
