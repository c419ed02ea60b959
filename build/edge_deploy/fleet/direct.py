"""Deploy one model to one robot with no registry (``edge-deploy deploy --to``, ``JetsonDeployment.deploy()``
without ``release=``): build the runtime image for the robot into the host's image store (an OCI layout),
record a local development release pinned by that digest, and deploy it through the same state machine as
a rollout (upload, engine pre-build, switch, gate, automatic rollback, history) with the ``ssh-copy``
transport, so only the layers the robot lacks travel over SSH.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Fleet, InvalidRobotField, Robot, host_problem
from edge_deploy.fleet.options import RolloutOptions

if TYPE_CHECKING:
    from edge_deploy.fleet.rollout import RolloutResult
    from edge_deploy.images import BuildResult
    from edge_deploy.release.manifest import ReleaseManifest

log = logging.getLogger(__name__)

# The name a development image has in the host's store and on the robot; never pulled from anywhere (the
# robot gets it over SSH), so it names no registry.
LOCAL_REGISTRY = "edge-deploy.local"
LOCAL_REPOSITORY = f"{LOCAL_REGISTRY}/edge-deploy/runtime"
FP32_MODEL = "model.fp32.onnx"  # model/convert.py's name for it (not imported: no torch for this module)
MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".onnx")
SKIP_SIGNATURE = "insecure_skip_signature_check"
SIGN_KEY_ENV = "EDGE_COSIGN_KEY"
_TARGET = re.compile(r"^(?P<user>[^@\s]+)@(?P<host>[^@\s]+)\Z")


def parse_target(to: str) -> tuple[str, str]:
    """``USER@HOST`` → (user, host); both are checked again as a robot's fields (``Robot``)."""
    m = _TARGET.match(to)
    if m is None:
        raise FleetError(
            f"The robot must be given as USER@HOST (e.g. robot@192.168.1.100), got {to!r}.", option="to"
        )
    return m["user"], m["host"]


def target_robot(host: str, **fields: Any) -> Robot:
    """The one robot of a direct deploy: ``fields`` are inventory fields (user, port, ssh_key, known_hosts,
    jetson_model, ...), checked as fleet.yaml's are; keys and known_hosts as paths."""
    kw: dict[str, Any] = {
        k: (Path(v).expanduser() if k in ("ssh_key", "known_hosts") and v is not None else v)
        for k, v in fields.items()
    }
    bad = host_problem(host)
    if bad is not None:  # before the host names the robot
        raise InvalidRobotField(host, "host", bad)
    if kw.get("jetson_model") is not None:  # unknown names: one sentence with the choices
        from edge_runtime.jetson import jetson_module

        kw["jetson_model"] = jetson_module(str(kw["jetson_model"])).key
    name = str(kw.pop("name", None) or host)
    return Robot(name=name, host=host, **kw)


def inventory_entry(host: str, port: int | None = None, user: str | None = None) -> dict[str, Any]:
    """The inventory fields of the robot at ``host`` (and ``port``, ``user`` when given) in the fleet.yaml
    that EDGE_FLEET names, so a robot already listed there is reached with its own settings (key,
    known_hosts, service port, gpu ...); {} without EDGE_FLEET or without exactly one such robot."""
    from dataclasses import asdict

    from edge_deploy.fleet.inventory import load_fleet

    path = os.environ.get("EDGE_FLEET", "").strip()
    if not path:
        return {}
    fleet = load_fleet(Path(path))
    found = [r for r in fleet.robots if r.host == host and port in (None, r.port) and user in (None, r.user)]
    if len(found) != 1:
        return {}
    entry = asdict(found[0])
    entry.pop("host")
    entry["groups"], entry["labels"] = tuple(entry["groups"]), dict(entry["labels"])
    return entry


def reach(robot: Robot) -> None:
    """Connect once, host key checked as in rollouts (an unknown or changed key is refused); one sentence
    when the robot cannot be reached."""
    import asyncio

    from edge_deploy.fleet.ssh import connected

    async def probe() -> None:
        async with connected(robot) as conn:
            await conn.check("true", "a first command")

    asyncio.run(probe())


def model_source(path: Path) -> Path:
    """The model file to build from: a model file as it is, or a model bundle's fp32 ONNX graph (its
    ``model.onnx`` when it is fp32 already)."""
    if path.is_dir():
        from edge_runtime.bundle import BundleError, ModelBundle

        try:
            bundle = ModelBundle.load(path)
        except BundleError as exc:
            raise FleetError(f"{path} is not a model bundle: {exc}") from None
        fp32 = path / FP32_MODEL  # an fp16/int8 bundle keeps its fp32 graph: the image converts from it
        return fp32 if fp32.is_file() else bundle.model_path
    if not path.is_file():
        raise FleetError(f"Model {path} does not exist.")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise FleetError(f"Model {path} is not a model file ({', '.join(MODEL_SUFFIXES)}) or a model bundle.")
    return path


def dev_version(bundle_sha256: str, git_sha: str) -> str:
    """``0.0.0-dev.<hash>``: the bundle's hash when known (a changed model is a new version), else the
    commit; a semantic-version pre-release identifier (never all digits with a leading zero)."""
    raw = re.sub(r"[^0-9a-f]", "", (bundle_sha256 or git_sha or "").lower())[:12] or "local"
    return f"0.0.0-dev.{'g' + raw if raw.isdigit() else raw}"


def build_for_robot(
    model: Path,
    robot: Robot,
    store: Path,
    *,
    precision: str = "fp16",
    builder: Callable[..., BuildResult] | None = None,
    on_step: Callable[[str], None] = lambda s: None,
) -> tuple[str, BuildResult]:
    """Build the runtime image of ``model`` for ``robot``'s platform into the image store; returns its
    ``repository@sha256:…`` and the build's result. Bases and the runtime's Python come from the JetPack
    table, or EDGE_L4T_BASE / EDGE_CONVERTER_BASE / EDGE_RUNTIME_PYTHON (as ``image build`` takes them);
    EDGE_DEPLOY_SOURCE names a checkout-shaped tree to build instead of the running tool's files."""
    from edge_deploy.fleet.transport import ImageStore
    from edge_deploy.images import build_images

    source = model_source(model)
    build = builder or build_images
    with tempfile.TemporaryDirectory(prefix="edge-direct-") as tmp:
        model_dir, layout = Path(tmp) / "model", Path(tmp) / "layout"
        model_dir.mkdir()
        shutil.copyfile(source, model_dir / source.name)
        data = source.with_name(source.name + ".data")  # ONNX weights kept beside the graph
        if data.is_file():
            shutil.copyfile(data, model_dir / data.name)
        result = build(
            model_dir=model_dir,
            model=source.name,
            precision=precision,
            version="dev",
            registry=LOCAL_REGISTRY,
            l4t_base=os.environ.get("EDGE_L4T_BASE") or None,
            converter_base=os.environ.get("EDGE_CONVERTER_BASE") or None,
            runtime_python=os.environ.get("EDGE_RUNTIME_PYTHON") or None,
            # A checkout-shaped tree to build instead of the running tool's own files (a pinned checkout).
            source=Path(os.environ["EDGE_DEPLOY_SOURCE"]) if os.environ.get("EDGE_DEPLOY_SOURCE") else None,
            runtime_platforms=robot.platform,
            push=False,
            overrides=[f"runtime.output=type=oci,dest={layout},tar=false"],
            progress="quiet",
            on_step=on_step,
        )
        digest = ImageStore(store).add_layout(layout)
    return f"{LOCAL_REPOSITORY}@{digest}", result


def record_release(
    ref: str,
    result: BuildResult,
    releases_dir: Path,
    *,
    store: Path | None = None,
    sign_key: Path | str | None = None,
) -> str:
    """Write the local development release of ``ref`` (digest-pinned) and return its version; with
    ``sign_key``, its image's manifest in ``store`` is signed (``cosign sign-blob``) beside the record."""
    from edge_deploy.release.manifest import ReleaseManifest, save_release

    version = dev_version(result.bundle_sha256, result.variables.get("GIT_SHA", ""))
    manifest = ReleaseManifest.for_runtime_image(version, ref, "local")
    extra: dict[str, Any] = {"transport": "ssh-copy", "dev": True}
    if sign_key is not None:
        if store is None:
            raise FleetError("Signing a development release needs the image store that holds its image.")
        sig = sign_release(ref, store, version, releases_dir, sign_key)
        manifest.runtime.signature = sig.name
        extra["signature_blob"] = sig.name
    manifest = replace(
        manifest,
        git_sha=result.variables.get("GIT_SHA", "unknown"),
        bundle_sha256=result.bundle_sha256,
        precision=result.precision,
        base_image=result.variables.get("L4T_BASE", ""),
        ros2=result.ros2,
        extra=extra,
    )
    save_release(manifest, releases_dir)
    return version


# --- Signatures of development releases: no registry holds them, so the image's manifest (or index) blob in
# the host's store, whose sha256 is the digest the robot pulls, is signed as a file (``cosign sign-blob``)
# and the signature kept beside the release record as ``<version>.sig``. A public key then verifies it on
# the host before anything reaches a robot, as a rollout verifies a registry image's signature.


def signature_path(version: str, releases_dir: Path) -> Path:
    """``releases_dir/<version>.sig``; the version is checked first, so it cannot name another path."""
    from edge_deploy.release.manifest import manifest_path

    return manifest_path(version, releases_dir).with_suffix(".sig")


def _manifest_blob(ref: str, store: Path) -> Path:
    """The store's file of ``ref``'s manifest, checked against its digest (what is signed is what the robot
    pulls)."""
    import hashlib

    from edge_deploy.fleet.transport import ImageStore, split_digest_ref

    _, _, digest = split_digest_ref(ref)
    blob = ImageStore(store).blob(digest)
    if not blob.is_file():
        raise FleetError(
            f"The host's image store ({store}) does not hold {ref}; build it for the robot first."
        )
    if "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() != digest:
        raise FleetError(f"The host's image store holds a corrupted manifest for {ref}; refusing it.")
    return blob


def sign_release(ref: str, store: Path, version: str, releases_dir: Path, key: Path | str) -> Path:
    """Sign ``ref``'s manifest in ``store`` with ``key``; returns the signature file beside the record."""
    from edge_deploy.release.signing import sign_blob

    return sign_blob(_manifest_blob(ref, store), key, signature_path(version, releases_dir))


def is_local_release(manifest: ReleaseManifest) -> bool:
    """A development release from ``deploy`` (its image in the host's store, not in a registry)."""
    return manifest.extra.get("dev") is True


def verify_local_release(
    manifest: ReleaseManifest, releases_dir: Path, store: Path | None, public_key: Path | str
) -> None:
    """Verify a development release's blob signature with ``public_key`` on the host; an unsigned one is
    refused in one sentence (the operator configured a key, so an unverified image must not go out)."""
    from edge_deploy.fleet.transport import default_store
    from edge_deploy.release.signing import verify_blob

    version, ref = manifest.version, manifest.runtime.ref
    name = manifest.extra.get("signature_blob")
    if not isinstance(name, str) or not name:
        raise FleetError(
            f"Release {version} is a local development build with no signature, and a public key "
            f"({public_key}) is configured to verify it: deploy it with a signing key (--sign-key or "
            f"EDGE_COSIGN_KEY) so it is signed, or deploy it unverified with `{SKIP_SIGNATURE}`.",
            option=("public_key", SKIP_SIGNATURE),
        )
    expected = signature_path(version, releases_dir)
    if name != expected.name:  # the record names its own file only, never another path
        raise FleetError(
            f"Release {version} names the signature file {name!r}, not {expected.name!r}; refusing."
        )
    blob = _manifest_blob(ref, store or default_store())
    verify_blob(blob, public_key, expected, what=f"image {ref} of release {version}")


def configured_public_key() -> Path | None:
    """The public key a direct deploy verifies with when none is passed: EDGE_COSIGN_PUB (as ``release
    verify`` takes it), else ``public_key:`` of the fleet.yaml that EDGE_FLEET names."""
    env = os.environ.get("EDGE_COSIGN_PUB", "").strip()
    if env:
        return Path(env)
    path = os.environ.get("EDGE_FLEET", "").strip()
    if not path:
        return None
    from edge_deploy.fleet.inventory import load_fleet

    return load_fleet(Path(path)).public_key


def deploy_direct(
    model: Path,
    robot: Robot,
    *,
    precision: str = "fp16",
    work: Path | None = None,
    builder: Callable[..., BuildResult] | None = None,
    on_step: Callable[[str], None] = lambda s: None,
    sign_key: Path | str | None = None,
    **options: Any,
) -> RolloutResult:
    """Build, record and deploy ``model`` to ``robot`` over SSH (see the module docstring). ``options`` are
    ``RolloutOptions`` fields (include_ros2, auto_start, health_timeout_s, public_key, ...). ``work``: where
    the image store and the development releases live (the tool's work directory by default).

    ``sign_key`` (else EDGE_COSIGN_KEY, password from COSIGN_PASSWORD) signs the release; a public key
    (``public_key``, else EDGE_COSIGN_PUB, else fleet.yaml's ``public_key:``) verifies it before anything
    reaches the robot, and refuses an unsigned one unless ``insecure_skip_signature_check``. With no key at
    all, the image (pinned by digest from the host's own build) goes out unverified, with a warning."""
    from edge_deploy.fleet.operations import deploy_release
    from edge_deploy.fleet.options import options_from_keywords
    from edge_deploy.images.files import work_dir
    from edge_deploy.release.signing import key_reference

    root = work or work_dir()
    store, releases = root / "image-store", root / "dev-releases"
    for reserved in ("version", "transport", "image_store", "releases_dir", "devices", "group"):
        if reserved in options:
            raise FleetError(f"A direct deploy chooses {reserved!r} itself; leave it out.", option=reserved)
    opts = options_from_keywords(RolloutOptions, version="0.0.0", **options)  # names checked before the build
    key = sign_key if sign_key is not None else (os.environ.get(SIGN_KEY_ENV, "").strip() or None)
    if key is not None:
        key_reference(key)  # a missing key file is said before minutes of building
    if opts.public_key is None and not opts.insecure_skip_signature_check:
        opts = replace(opts, public_key=configured_public_key())
    if opts.public_key is not None and not opts.insecure_skip_signature_check and key is None:
        raise FleetError(
            f"A public key ({opts.public_key}) is configured to verify releases, and this deploy would "
            f"make an unsigned one: pass a signing key (--sign-key or {SIGN_KEY_ENV}), or deploy it "
            f"unverified with `{SKIP_SIGNATURE}`.",
            option=("sign_key", SKIP_SIGNATURE),
        )
    model_source(model)  # a missing or unknown model is said first
    reach(robot)  # an unknown host key or an unreachable robot is said before minutes of building
    on_step(f"runtime image for {robot.platform}")
    ref, result = build_for_robot(model, robot, store, precision=precision, builder=builder, on_step=on_step)
    version = record_release(ref, result, releases, store=store, sign_key=key)
    on_step(f"release {version} ({ref}{', signed' if key is not None else ''})")
    if not opts.insecure_skip_signature_check and opts.public_key is None:
        # No public key is configured anywhere: the image, pinned by digest from the host's own build, goes
        # out unverified, and the deploy says so (a fleet with a key verifies, see verify_local_release).
        log.warning(
            "Release %s is a local development build%s and no public key is configured: its image is not "
            "verified.",
            version,
            " (signed)" if key is not None else "",
        )
        opts = replace(opts, insecure_skip_signature_check=True)
    opts = replace(opts, version=version, transport="ssh-copy", image_store=store, releases_dir=releases)
    return deploy_release(Fleet(name=f"robot-{robot.name}", robots=(robot,)), opts)
