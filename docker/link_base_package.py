"""Make a package of the base image's own Python importable in the runtime venv, by one symlink.

    python3 -I link_base_package.py VENV NAME [--required | --optional]

Run by the base's ``python3`` (the interpreter the venv was made from). On l4t-jetpack TensorRT's Python
module is a Debian package (``python3-libnvinfer``) in the system Python's dist-packages, which a venv does
not see; ``--system-site-packages`` would expose every system package, and pip would then count the base's
older packages as installed. One symlink exposes exactly ``NAME`` and copies nothing into our layers.
The package is found by the interpreter's own path search (``-I``: no PYTHONPATH, no user site), so it
works for any Python version and wherever the base keeps it; the module is not imported here (at build
time there is no GPU, and on a Jetson not even the driver).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path


def find_package(name: str, path: list[str] | None = None) -> Path | None:
    """Where ``name`` lives on ``path`` (default ``sys.path``): a package directory or a module file."""
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:
        if spec.origin and os.path.isfile(spec.origin):
            return Path(spec.origin).parent
        locations = list(spec.submodule_search_locations)  # a namespace package: only a single portion
        return Path(locations[0]) if len(locations) == 1 else None
    return Path(spec.origin) if spec.origin and os.path.isfile(spec.origin) else None


def venv_site_packages(venv: Path) -> Path:
    """The venv's site-packages, for the Python running this (the venv's own: same version)."""
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def link(venv: Path, name: str, *, required: bool, path: list[str] | None = None) -> str:
    """Link ``name`` from the interpreter's path into ``venv``; return what was done, in one line."""
    site = venv_site_packages(venv)
    if not site.is_dir():
        raise SystemExit(f"{site} does not exist: {venv} is not a venv of Python "
                         f"{sys.version_info.major}.{sys.version_info.minor}.")
    found = find_package(name, path)
    if found is None:
        where = ", ".join(p for p in (path or sys.path) if p) or "(empty)"
        if required:
            raise SystemExit(f"The base image's Python {sys.version_info.major}.{sys.version_info.minor} has no "
                             f"{name} module on its path ({where}); build on a base that provides it "
                             f"(l4t-jetpack) or pass BASE_TENSORRT=optional.")
        return f"the base's Python has no {name} module; not linked (optional)"
    target = site / found.name
    if target.is_symlink() or target.exists():
        raise SystemExit(f"{target} already exists in the venv: a wheel installed {name} over the base's.")
    target.symlink_to(found)
    return f"linked the base's {name} ({found}) into {site}"


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    if len(args) != 2 or not flags <= {"--required", "--optional"} or len(flags) > 1:
        raise SystemExit("usage: link_base_package.py VENV NAME [--required | --optional]")
    print(link(Path(args[0]), args[1], required="--optional" not in flags))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
