"""The tool as a user gets it: a wheel built from this checkout, installed into a fresh venv outside it.

``tool_wheel`` builds the wheel once per session; ``installed_venv(dest, wheel, extras)`` makes a venv with
``edge-deploy[extras]`` from it. Installs resolve like a user's ``pip install`` (the machine's pip config),
with the converter's wheelhouse as extra find-links when it is there, and torch pinned to the CPU wheel
``scripts/setup`` uses (``EDGE_TORCH_SPEC``) when the extras pull torch in. A ``[device]``-only venv is
cheap (no torch): ``installed_venv(tmp, wheel, "device")``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("EDGE_TORCH_SPEC", "torch==2.13.0")


def _pip_env() -> dict[str, str]:
    # no inherited venv or PYTHONPATH: the venv sees only what was installed into it
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], *, timeout: int, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_pip_env())
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} … failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


def build_wheel(dest: Path) -> Path:
    """``pip wheel`` of this checkout (hatchling in an isolated build env, as a user's build gets it)."""
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(ROOT)], timeout=600)
    wheels = sorted(dest.glob("edge_deploy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def installed_venv(dest: Path, wheel: Path, extras: str) -> Path:
    """A fresh venv at ``dest`` with ``edge-deploy[extras]`` installed from ``wheel``; its bin directory."""
    _run([sys.executable, "-m", "venv", str(dest)], timeout=300)
    cmd = [str(dest / "bin" / "python"), "-m", "pip", "install", "-q"]
    wheelhouse = ROOT / ".edge" / "wheelhouse" / "converter"
    if wheelhouse.is_dir():
        cmd += ["--find-links", str(wheelhouse)]
    if "host" in extras.split(",") or "dev" in extras.split(","):
        cmd.append(TORCH_SPEC)
    _run([*cmd, f"{wheel}[{extras}]"], timeout=1200, cwd=dest.parent)
    return dest / "bin"


@pytest.fixture(scope="session")
def tool_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge-deploy wheel of this checkout, built once per session."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))
