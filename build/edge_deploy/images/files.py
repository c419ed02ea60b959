"""Where the tool's own files are (Dockerfiles, bake file, host scripts, sources) and where builds work.

An installed wheel carries them as package data under ``edge_deploy/_data`` (pyproject.toml's hatch
``force-include``); an editable install of a checkout does not (hatch does not expose force-included files
in dev mode), so the same lookup falls back to the checkout that holds the package. Both are found through
``importlib.resources``, and both give the same paths relative to a checkout's root.

Working files (wheelhouses, the staged build context) go under ``EDGE_DEPLOY_HOME``, by default ``.edge``
in the current directory: the user's project, never site-packages.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_runtime.errors import EdgeError

# checkout path → where an installed wheel keeps it, relative to the edge_deploy package (force-include)
SHIPPED = {
    "pyproject.toml": "_data/pyproject.toml",
    "README.md": "_data/README.md",
    "docker": "_data/docker",
    "scripts/host-setup": "_data/scripts/host-setup",
    "scripts/host-teardown": "_data/scripts/host-teardown",
    "compose": "compose_bundle",
}
# What the staged build context holds besides SHIPPED: the sources the images install.
SOURCES = ("build/edge_deploy", "runtime/edge_runtime")
# Never copied into a context: bytecode, and the installed package's data (staged at its checkout path).
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "_data", "compose_bundle")


class FilesError(EdgeError):
    """The tool's own files are missing (a broken install)."""


@dataclass(frozen=True)
class ToolFiles:
    """The tool's files, addressed by their path in a checkout (``docker/runtime.Dockerfile``)."""

    package: Path  # the edge_deploy package directory
    runtime: Path  # the edge_runtime package directory
    checkout: Path | None  # the checkout root when the package runs from one (editable install)

    def path(self, rel: str) -> Path:
        """``rel`` (a checkout-relative path of SHIPPED or SOURCES, or below one) in this install."""
        places = {name: self.package / shipped for name, shipped in SHIPPED.items()}
        places.update({"build/edge_deploy": self.package, "runtime/edge_runtime": self.runtime})
        for prefix, place in places.items():
            if rel == prefix or rel.startswith(prefix + "/"):
                return self.checkout / rel if self.checkout else place / rel[len(prefix) :].lstrip("/")
        raise FilesError(f"{rel} is not one of the files edge-deploy ships.")

    def require(self, rel: str) -> Path:
        """``path(rel)``, which must exist: one sentence naming the install's gap when it does not."""
        found = self.path(rel)
        if not found.exists():
            raise FilesError(
                f"{found} is missing: this edge-deploy install lacks its {rel} "
                "(reinstall the wheel, or run from a complete checkout)."
            )
        return found


def tool_files() -> ToolFiles:
    """The running edge-deploy's files: its wheel's package data, else the checkout it runs from."""
    package = Path(str(resources.files("edge_deploy")))
    runtime = Path(str(resources.files("edge_runtime")))
    if (package / "_data").is_dir():
        return ToolFiles(package=package, runtime=runtime, checkout=None)
    checkout = package.parents[1]  # build/edge_deploy → the checkout root
    if (checkout / "pyproject.toml").is_file() and (checkout / "docker").is_dir():
        return ToolFiles(package=package, runtime=runtime, checkout=checkout)
    raise FilesError(
        f"edge-deploy at {package} has neither its package data (_data) nor a checkout around it; "
        "reinstall it from its wheel."
    )


def work_dir() -> Path:
    """Where builds keep their working files: ``EDGE_DEPLOY_HOME``, else ``.edge`` in the current directory."""
    home = os.environ.get("EDGE_DEPLOY_HOME")
    return Path(home).expanduser().resolve() if home else Path.cwd().resolve() / ".edge"


def stage_context(dest: Path, files: ToolFiles | None = None) -> Path:
    """Lay the tool's sources and build files out in ``dest`` as a checkout has them (the bake context).

    The converter image builds edge-deploy from this tree, as ``pip install`` of a checkout would, so the
    same pyproject, Dockerfiles and sources are built whether the tool runs installed or from a checkout.
    ``dest`` is replaced; file times are kept (BuildKit's context transfer then skips unchanged files).
    """
    files = files or tool_files()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in [*SHIPPED, *SOURCES]:
        src = files.require(rel)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=_IGNORE)
        else:
            shutil.copy2(src, target)
    return dest
