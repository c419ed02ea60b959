"""What the operator asks of a fleet operation, as one typed value per operation.

The CLI builds these once from its options (``edge-deploy rollout`` → ``RolloutOptions``, ``edge-deploy
rollback`` → ``RollbackOptions``), ``JetsonDeployment.deploy`` builds the same ``RolloutOptions``, and
they are passed down unchanged: ``deploy_release``, ``Rollout`` and ``rollback`` read them, and
``deploy_request`` turns one into what a robot receives (``DeployRequest``), in one place. Field names are
the library's words: the CLI decides how a flag spells them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from edge_deploy.release.manifest import ReleaseManifest

HistoryAction = Literal["deploy", "rollback"]
Opts = TypeVar("Opts", "RolloutOptions", "RollbackOptions")
# Keyword names of the API before these objects (``deploy_to_device``'s config, ``edge_deploy.rollout``).
RENAMED = {"health_timeout": "health_timeout_s", "confirm_timeout": "confirm_timeout_s"}


@dataclass(frozen=True, kw_only=True)
class FleetOptions:
    """What every operation on robots shares: which robots (a group, named devices, or all), where the
    release manifests are, how signatures are checked and how robots are gated."""

    group: str | None = None
    devices: tuple[str, ...] = ()  # empty: no filter by name
    releases_dir: Path | None = None  # None: the inventory's releases_dir, else ./releases
    # The image signature is verified with ``public_key`` (else the inventory's ``public_key:``) before any
    # robot is touched, unless the operator opts out on purpose.
    public_key: Path | None = None
    insecure_skip_signature_check: bool = False
    health_timeout_s: float = 600.0  # for the service to turn healthy (a first start builds the engine)
    smoke: bool = True  # the gate runs one inference on an input made from the model's metadata
    # --- update strategy: "hand-over" or "stop-start" for every robot; None: each robot's update_strategy
    update_strategy: str | None = None

    def __post_init__(self) -> None:
        from edge_deploy.fleet import FleetError
        from edge_deploy.fleet.inventory import UPDATE_STRATEGIES

        if self.update_strategy is not None and self.update_strategy not in UPDATE_STRATEGIES:
            raise FleetError(
                f"The update strategy must be {' or '.join(UPDATE_STRATEGIES)}, not {self.update_strategy!r}."
            )

    @property
    def device_list(self) -> list[str] | None:
        """``devices`` as ``Fleet.select`` takes it."""
        return list(self.devices) or None


@dataclass(frozen=True, kw_only=True)
class RolloutOptions(FleetOptions):
    """One rollout of release ``version`` across the fleet in waves (see ``Rollout``)."""

    version: str
    # Waves: an optional canary wave, then fixed-size (``wave_size``) or proportional (``wave_percent``)
    # waves; the rollout stops when more than ``max_failures`` robots fail, or the canary does.
    canary: int = 0
    wave_size: int | None = None
    wave_percent: float | None = None
    max_failures: int = 0
    concurrency: int = 8  # robots of one wave updated at once
    # How long each robot waits, once the new release is up, for the operator's gate to confirm it.
    confirm_timeout_s: float = 300.0
    include_ros2: bool = False
    ros_domain_id: int = 0
    auto_start: bool = False  # install and enable the systemd unit on each robot
    force: bool = False  # deploy even where the version is marked bad
    prune: bool = True  # keep only the current and previous releases (and their engines) afterwards
    prebuild: bool = True  # build the engine before the switch, while the running release serves
    dry_run: bool = False  # plan the waves; touch no robot, check no signature
    # How each robot gets the image: "registry" (it pulls from the release's registry) or "ssh-copy" (the
    # host serves it over the SSH connection, only the layers the robot lacks; fleet/transport.py).
    transport: str = "registry"
    image_store: Path | None = None  # ssh-copy: the host's image store (None: <work dir>/image-store)


@dataclass(frozen=True, kw_only=True)
class RollbackOptions(FleetOptions):
    """Put robots back on their previous release, or on ``to``, from what they keep (no download); a
    ``to`` release a robot no longer keeps is deployed there from its manifest, signature checked first."""

    to: str | None = None
    # --- a ``to`` release no longer kept: how the robot gets its image. None: ``ssh-copy`` when the host's
    # image store holds it for every robot's platform (a development release, or one copied before), else
    # ``registry``; or "registry" / "ssh-copy" as RolloutOptions.transport.
    transport: str | None = None
    image_store: Path | None = None  # ssh-copy: the host's image store (None: <work dir>/image-store)


def options_from_keywords(cls: type[Opts], **kw: Any) -> Opts:
    """``cls`` from loose keywords (a config mapping, the keyword form of one release ago): old names are
    mapped, a list of devices becomes a tuple, and a name no option has is one sentence."""
    from edge_deploy.fleet import FleetError

    values = {RENAMED.get(k, k): v for k, v in kw.items()}
    known = {f.name for f in fields(cls)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise FleetError(
            f"{cls.__name__} has no option {unknown[0]!r}; the options are {', '.join(sorted(known))}."
        )
    if values.get("devices") is not None:
        values["devices"] = tuple(values["devices"])
    else:
        values.pop("devices", None)
    return cls(**values)


@dataclass
class DeployRequest:
    """One release as a robot receives it (made from the operator's options by ``deploy_request``)."""

    version: str
    image: str  # repository@sha256:…
    release: dict[str, Any] = field(default_factory=dict)  # release.json content
    include_ros2: bool = False
    ros_domain_id: int = 0
    auto_start: bool = False  # install and enable the systemd unit
    health_timeout_s: float = 600.0
    smoke: bool = True  # one inference on an input made from the served model's metadata
    force: bool = False  # deploy even if the version is marked bad on the robot
    prune: bool = True
    # Build the new release's engine into the robot's cache before the switch, while the running release
    # keeps serving: the switch then only loads it (seconds instead of a TensorRT build of minutes).
    prebuild: bool = True
    # The release manifest's required_backend: "tensorrt", "any", or None (the robot's gpu and
    # allow_cpu_fallback decide); see gate.expected_backend.
    required_backend: str | None = None
    # How long the robot waits, once the new release is up, for the operator's health gate to confirm it;
    # without a confirmation (the connection died, the tool was killed) it restores the previous release.
    confirm_timeout_s: float = 300.0
    # Releases the operator knows (digest → (version, repository@digest)), to name what a robot really
    # runs when someone pinned an image by hand.
    known_images: dict[str, tuple[str, str]] = field(default_factory=dict)
    action: HistoryAction = "deploy"  # the history's word for it ("rollback": rollback --to not kept)
    transport: str = "registry"  # "registry" or "ssh-copy" (see RolloutOptions.transport)
    # "hand-over" or "stop-start" (the operator's override), None: the robot's update_strategy.
    update_strategy: str | None = None
    image_store: Path | None = None  # ssh-copy: the host's image store the robot pulls from


def deploy_request(
    manifest: ReleaseManifest,
    options: RolloutOptions | RollbackOptions,
    *,
    signed: bool,
    known: dict[str, tuple[str, str]],
) -> DeployRequest:
    """What a robot receives for ``manifest``: a rollout's options as they are, or a rollback to a release
    the robot no longer keeps (forced, recorded as a rollback, with defaults for what a rollback does not
    choose)."""
    common: dict[str, Any] = {
        "version": manifest.version,
        "image": manifest.runtime.ref,
        "health_timeout_s": options.health_timeout_s,
        "smoke": options.smoke,
        "required_backend": manifest.required_backend,
        "known_images": known,
        "update_strategy": options.update_strategy,
        "release": {
            "git_sha": manifest.git_sha,
            "bundle_sha256": manifest.bundle_sha256,
            "precision": manifest.precision,
            "signed": signed,
        },
    }
    if isinstance(options, RollbackOptions):
        return DeployRequest(
            **common,
            force=True,
            action="rollback",
            transport=options.transport or "registry",
            image_store=options.image_store,
        )
    return DeployRequest(
        **common,
        include_ros2=options.include_ros2,
        ros_domain_id=options.ros_domain_id,
        auto_start=options.auto_start,
        force=options.force,
        prune=options.prune,
        prebuild=options.prebuild,
        confirm_timeout_s=options.confirm_timeout_s,
        transport=options.transport,
        image_store=options.image_store,
    )
