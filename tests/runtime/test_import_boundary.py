"""The runtime side stands alone: ``edge_runtime`` and its tests never import the host side (``edge_deploy``)
nor torch, so the robot image needs neither and runtime tests run where only the device extra is installed.

Two checks each: the source (every import statement, also those inside functions, which an import-time
check cannot see) and the running interpreter (every module imported in a fresh process, then
``sys.modules`` read, which also catches an import made by a third-party module on our behalf).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "runtime" / "edge_runtime"
TESTS = REPO / "tests" / "runtime"
FORBIDDEN = ("edge_deploy", "torch")
# Runs only under the TensorRT harness's interpreter path (its module-level skip ends a plain import);
# the source check below still covers it.
HARNESS_ONLY = {"tests.runtime.tensorrt_contract_cases"}


def _forbidden_imports(root: Path, base: Path = REPO) -> list[str]:
    """``path:line module`` (path relative to ``base``) for each import of a forbidden package under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    found.append(f"{path.relative_to(base)}:{node.lineno} {name}")
    return found


def _import_all(modules: list[str]) -> list[str]:
    """Import ``modules`` in a fresh interpreter; return the forbidden packages left in ``sys.modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtime")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def _module_names(root: Path, package: str) -> list[str]:
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__main__":  # runs the CLI when imported
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join([package, *parts]))
    return names


def test_edge_runtime_source_never_imports_the_host_side() -> None:
    assert _forbidden_imports(PACKAGE) == []


def test_importing_every_edge_runtime_module_loads_neither_the_host_side_nor_torch() -> None:
    modules = _module_names(PACKAGE, "edge_runtime")
    assert "edge_runtime.service" in modules and len(modules) > 30  # the walk found the package
    assert _import_all(modules) == []


def test_runtime_tests_never_import_the_host_side() -> None:
    assert _forbidden_imports(TESTS) == []


def test_importing_the_runtime_test_modules_loads_neither_the_host_side_nor_torch() -> None:
    modules = [
        m for m in _module_names(TESTS, "tests.runtime") if m not in HARNESS_ONLY and ".fixtures" not in m
    ]
    assert "tests.runtime.conftest" in modules and "tests.runtime.test_service" in modules
    assert _import_all(modules) == []


def test_the_source_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The static check is the one that sees lazy imports; make sure it does."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from edge_deploy.model import convert\n    import torch.nn\n")
    assert _forbidden_imports(tmp_path, tmp_path) == ["lazy.py:2 edge_deploy.model", "lazy.py:3 torch.nn"]
