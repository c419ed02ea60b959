"""Options several commands take, defined once so that a flag means the same everywhere: --json, --fleet,
--group, --device, --releases-dir, --key and --registry; and the image options that `image build` and
`release create` both take (the same model, precision, calibration, registry, bases and platforms are
checked the same way, before any work starts, whichever command builds the images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_deploy.images.build import DEFAULT_CONVERTER_BASE, DEFAULT_L4T_BASE, DEFAULT_RUNTIME_PYTHON
from edge_runtime.jetpack import default_release

F = TypeVar("F", bound=Callable[..., Any])

PLATFORMS = ("linux/arm64", "linux/amd64", "linux/arm64,linux/amd64")


def _standin_hint() -> str:
    row = default_release()
    hint = f"{row.python} on JetPack {row.jetpack}"
    return hint + (f", {row.standin.python} on our stand-in" if row.standin else "")


def image_options(f: F) -> F:
    """--precision, --calibration, --registry, --prefix, --l4t-base, --converter-base, --runtime-python,
    --platform (in that order in --help)."""
    for option in reversed(
        [
            click.option(
                "--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True
            ),
            click.option(
                "--calibration",
                type=click.Path(path_type=Path),
                default=None,
                help="Calibration npz (int8); must sit in the model's directory (the build context).",
            ),
            registry_option("localhost:5000", help="Registry the images are pushed to."),
            click.option("--prefix", "image_prefix", default="edge-deploy", show_default=True),
            click.option(
                "--l4t-base",
                envvar="EDGE_L4T_BASE",
                show_envvar=True,
                default=None,
                show_default=DEFAULT_L4T_BASE,
                help="Runtime base image.",
            ),
            click.option(
                "--converter-base",
                envvar="EDGE_CONVERTER_BASE",
                show_envvar=True,
                default=None,
                show_default=DEFAULT_CONVERTER_BASE,
                help="Converter base image.",
            ),
            click.option(
                "--runtime-python",
                envvar="EDGE_RUNTIME_PYTHON",
                show_envvar=True,
                default=DEFAULT_RUNTIME_PYTHON,
                show_default=True,
                help=f"Python version of the runtime base ({_standin_hint()}).",
            ),
            click.option(
                "--platform",
                "platforms",
                type=click.Choice(PLATFORMS),
                default="linux/arm64",
                show_default=True,
                help="Runtime platform(s) (amd64: x86 simulation hosts; both: one multi-platform index).",
            ),
        ]
    ):
        f = option(f)
    return f


def calibration_name(model: Path, calibration: Path | None) -> str:
    """The calibration file's name inside the model's directory ("" for none); a file elsewhere is refused
    (only the model's directory goes into the build context)."""
    if calibration is None:
        return ""
    calibration = calibration.resolve()
    if calibration.parent != model.resolve().parent:
        raise click.UsageError(
            "--calibration must be in the same directory as the model (the build context)."
        )
    return calibration.name


def json_option(help: str = "Print the result as JSON on stdout.") -> Callable[[F], F]:
    """--json (parameter ``as_json``): machine-readable output instead of the text for people."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def fleet_option() -> Callable[[F], F]:
    """--fleet (parameter ``fleet_file``): the fleet inventory."""
    return click.option(
        "--fleet",
        "fleet_file",
        type=click.Path(path_type=Path),
        default=Path("fleet.yaml"),
        show_default=True,
        envvar="EDGE_FLEET",
        show_envvar=True,
        help="Fleet inventory (fleet.yaml).",
    )


def group_option() -> Callable[[F], F]:
    """--group: only the robots of one inventory group."""
    return click.option("--group", help="Only robots of this inventory group.")


def devices_option() -> Callable[[F], F]:
    """--device, repeatable (parameter ``devices``): only these robots."""
    return click.option("--device", "devices", multiple=True, help="Only this robot (repeatable).")


def device_option(help: str = "Robot name from the inventory.") -> Callable[[F], F]:
    """--device, exactly one robot (parameter ``device``)."""
    return click.option("--device", required=True, help=help)


def releases_dir_option(
    help: str = "Where release manifests (<VERSION>.json) live [default: `releases_dir:` in fleet.yaml, "
    "else ./releases].",
) -> Callable[[F], F]:
    """--releases-dir: where the release manifests live."""
    return click.option("--releases-dir", type=click.Path(path_type=Path), default=None, help=help)


def public_key_option(
    help: str, default: Path | None = None, envvar: str | None = None, must_exist: bool = False
) -> Callable[[F], F]:
    """--key (parameter ``public_key``): the cosign public key signatures are verified with."""
    return click.option(
        "--key",
        "public_key",
        type=click.Path(exists=must_exist, path_type=Path),
        default=default,
        show_default=default is not None,
        envvar=envvar,
        show_envvar=envvar is not None,
        help=help,
    )


def sign_key_option(signs: str) -> Callable[[F], F]:
    """--sign-key (parameter ``sign_key``): the cosign private key that signs ``signs`` (a file or key
    reference, kept a string; COSIGN_PASSWORD decrypts it), for commands whose --key is the SSH key."""
    return click.option(
        "--sign-key",
        type=click.Path(path_type=str),
        envvar="EDGE_COSIGN_KEY",
        show_envvar=True,
        default=None,
        help=f"cosign private key {signs}",
    )


def signing_key_option() -> Callable[[F], F]:
    """--key (parameter ``key``): the cosign private key a release is signed with: a file, a reference
    cosign resolves (kept a string: a Path would fold ``awskms:///…``), or ``keyless``."""
    return click.option(
        "--key",
        type=click.Path(path_type=str),
        envvar="EDGE_COSIGN_KEY",
        show_envvar=True,
        default=None,
        help="cosign private key: a file or env://VAR (password from COSIGN_PASSWORD), a KMS reference "
        "(awskms://, gcpkms://, azurekms://, hashivault://, k8s://, pkcs11:), or `keyless` (the CI job's "
        "OIDC identity).",
    )


def registry_option(default: str, help: str | None = None) -> Callable[[F], F]:
    """--registry: the registry images are pushed to or pulled from."""
    return click.option(
        "--registry", envvar="EDGE_REGISTRY", show_envvar=True, default=default, show_default=True, help=help
    )
