"""The JetPack table, as data: JetPack → L4T → CUDA → TensorRT → cuDNN → Python → Ubuntu → base image.

The rows live in ``jetpack.json`` beside this module (package data, JSON because the robot's Python 3.10 has
no ``tomllib``). Everything that names a JetPack version derives from it: the device probe's L4T → JetPack
answer, the TensorRT version quantization writes into calibration caches, the image build's default bases
and runtime Python, the release's recorded base, and the table in docs/images.md. Values that cannot import
Python (the bake file, the Dockerfiles' ARG defaults, pyproject's ``jetson`` extra) keep their copies, and a
test fails when they drift from the default row.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edge_runtime.errors import EdgeError

DATA_FILE = "jetpack.json"


class VersionsTableError(EdgeError):
    """The packaged JetPack table is unreadable or inconsistent (a packaging fault, not a user error)."""


@dataclass(frozen=True)
class StandIn:
    """The local JetPack-shaped stand-in for a row's base (``scripts/host-setup`` builds it)."""

    image: str  # repository:tag under the local registry, e.g. edge-deploy/l4t-standin:r36.4
    python: str
    tensorrt: dict[str, str]  # arch (arm64, amd64) → version of TensorRT's real bindings inside

    def reference(self, registry: str) -> str:
        return f"{registry}/{self.image}"


@dataclass(frozen=True)
class JetPackRelease:
    """One JetPack release and what it ships."""

    jetpack: str
    l4t: str
    cuda: str
    tensorrt: str
    cudnn: str | None
    python: str
    ubuntu: str
    base_image: str | None  # an l4t-jetpack reference; None where no image is known for this release
    cuda_python: str | None  # pip specifier of cuda-python for this CUDA; None where none exists
    deploy: bool  # whether the product builds and deploys runtime images on this release
    note: str = ""
    standin: StandIn | None = None

    @property
    def l4t_major(self) -> int:
        return int(self.l4t.split(".")[0])

    @property
    def generation(self) -> str:
        """The JetPack major version (6 for 6.1)."""
        return self.jetpack.split(".")[0]

    @property
    def cuda_python_requirement(self) -> str | None:
        return f"cuda-python{self.cuda_python}" if self.cuda_python else None


@dataclass(frozen=True)
class VersionsTable:
    releases: tuple[JetPackRelease, ...]
    default: JetPackRelease
    converter_base: str
    converter_python: str

    def release(self, jetpack: str) -> JetPackRelease:
        """The row of JetPack ``jetpack`` (e.g. "6.1"); one sentence naming the known ones otherwise."""
        for r in self.releases:
            if r.jetpack == jetpack:
                return r
        known = ", ".join(r.jetpack for r in self.releases)
        raise VersionsTableError(f"JetPack {jetpack!r} is not in the versions table (known: {known}).")

    def for_l4t(self, l4t: str) -> JetPackRelease | None:
        """The row whose L4T is exactly ``l4t`` ("36.4.0"); None for an L4T release the table lacks."""
        return next((r for r in self.releases if r.l4t == l4t), None)

    def generation_for_l4t_major(self, major: int) -> str | None:
        """The JetPack major an L4T major belongs to (R36 → "6"), from the rows; None if unknown."""
        return next((r.generation for r in self.releases if r.l4t_major == major), None)

    def for_base(self, image: str) -> JetPackRelease | None:
        """The newest row built on base ``image``, or None for a base the table does not name."""
        rows = [r for r in self.releases if r.base_image == image]
        return rows[-1] if rows else None


def _release(row: dict[str, Any]) -> JetPackRelease:
    standin = row.get("standin")
    return JetPackRelease(
        jetpack=str(row["jetpack"]),
        l4t=str(row["l4t"]),
        cuda=str(row["cuda"]),
        tensorrt=str(row["tensorrt"]),
        cudnn=row.get("cudnn"),
        python=str(row["python"]),
        ubuntu=str(row["ubuntu"]),
        base_image=row.get("base_image"),
        cuda_python=row.get("cuda_python"),
        deploy=bool(row["deploy"]),
        note=str(row.get("note", "")),
        standin=None
        if standin is None
        else StandIn(str(standin["image"]), str(standin["python"]), dict(standin["tensorrt"])),
    )


def parse_table(data: dict[str, Any]) -> VersionsTable:
    """Build the table from its JSON form, checking what the rest of the product relies on."""
    try:
        releases = tuple(_release(row) for row in data["releases"])
        default_name = str(data["default"])
        converter = data["converter"]
        converter_base, converter_python = str(converter["base_image"]), str(converter["python"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VersionsTableError(f"The JetPack table is malformed ({type(exc).__name__}: {exc}).") from None
    names = [r.jetpack for r in releases]
    if len(set(names)) != len(names) or len({r.l4t for r in releases}) != len(releases):
        raise VersionsTableError("The JetPack table names a JetPack or L4T release twice.")
    default = next((r for r in releases if r.jetpack == default_name), None)
    if default is None or not default.deploy or default.base_image is None:
        raise VersionsTableError(
            f"The JetPack table's default {default_name!r} is not a deployable row with a base image."
        )
    return VersionsTable(releases, default, converter_base, converter_python)


@functools.cache
def versions() -> VersionsTable:
    """The packaged table (read once per process)."""
    try:
        text = resources.files("edge_runtime").joinpath(DATA_FILE).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise VersionsTableError(f"The packaged JetPack table {DATA_FILE} is unreadable ({exc}).") from None
    return parse_table(data)


def default_release() -> JetPackRelease:
    return versions().default


def markdown_table(table: VersionsTable | None = None) -> str:
    """The table as docs/images.md shows it (the docs test compares the two)."""
    table = table or versions()
    lines = [
        "| JetPack | L4T | CUDA | TensorRT | cuDNN | Python | Ubuntu | base image | cuda-python | deploy | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.releases:
        deploy = "**default**" if r is table.default else ("yes" if r.deploy else "no")
        base = f"`{r.base_image}`" if r.base_image else "—"
        if r.standin is not None:
            base += f" (stand-in `{r.standin.image}`, Python {r.standin.python})"
        cells = [r.jetpack, r.l4t, r.cuda, r.tensorrt, r.cudnn or "—", r.python, r.ubuntu, base]
        cells += [f"`{r.cuda_python}`" if r.cuda_python else "—", deploy, r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
