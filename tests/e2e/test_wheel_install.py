"""The installed tool works outside a checkout: the wheel into a fresh venv, then in a user's own directory
``edge-deploy host status``, ``sample-model``, ``image build --push`` and ``release create`` against the
local Docker engine and registry. Wheelhouses come from ``EDGE_DEPLOY_HOME`` (this checkout's ``.edge``, so
repeated runs reuse the downloads and the build cache)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import STANDIN, STANDIN_PYTHON, delete_tags
from tests.installed import ROOT, installed_venv, tool_wheel

pytestmark = [pytest.mark.docker, pytest.mark.slow]
__all__ = ["tool_wheel"]  # the session fixture, used below


def _cli(bin_dir: Path, cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}", EDGE_DEPLOY_HOME=str(ROOT / ".edge"))
    proc = subprocess.run(
        [str(bin_dir / "edge-deploy"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"edge-deploy {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-4000:]}"
    )
    return proc


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=u", "-c", "user.email=u@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _config_labels(ref: str) -> dict[str, str]:
    """The image config's labels, read from the registry (the first platform of an index)."""
    out = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Image}}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    image = json.loads(out)
    config = image if "config" in image else next(iter(image.values()))
    return dict(config["config"].get("Labels") or {})


def test_the_installed_wheel_builds_and_releases_from_a_user_directory(
    docker_host: str, tool_wheel: Path, tmp_path: Path
) -> None:
    bin_dir = installed_venv(tmp_path / "venv", tool_wheel, "host")
    site = next((tmp_path / "venv" / "lib").glob("python3.*/site-packages"))
    assert (site / "edge_deploy" / "_data" / "docker" / "docker-bake.hcl").is_file()
    shipped_before = sorted(
        p.relative_to(site) for p in (site / "edge_deploy").rglob("*") if "__pycache__" not in p.parts
    )

    user = tmp_path / "project"  # the user's own project: a git repository with a model, no checkout
    user.mkdir()
    _git(user, "init", "-q")
    _cli(bin_dir, user, "host", "status")  # the shipped host-setup script, run from the package
    _cli(bin_dir, user, "sample-model", "-o", "model/policy.pt")
    (user / ".gitignore").write_text("/.edge/\n")
    _git(user, "add", ".")
    _git(user, "commit", "-qm", "model")

    prefix = f"edge-deploy-wheel-{uuid.uuid4().hex[:8]}"
    common = [
        "--registry",
        docker_host,
        "--prefix",
        prefix,
        "--l4t-base",
        STANDIN,
        "--converter-base",
        STANDIN,
    ]
    common += ["--runtime-python", STANDIN_PYTHON]
    try:
        built = json.loads(
            _cli(bin_dir, user, "image", "build", "model/policy.pt", "--push", "--json", *common).stdout
        )
        runtime = built["images"]["runtime"]
        assert runtime["digest"].startswith("sha256:") and built["images"]["converter"]["digest"]
        assert len(built["bundle_sha256"]) == 64
        labels = _config_labels(f"{runtime['tags'][0].rsplit(':', 1)[0]}@{runtime['digest']}")
        assert labels["io.edge-deploy.bundle.sha256"] == built["bundle_sha256"]

        released = json.loads(
            _cli(
                bin_dir,
                user,
                "release",
                "create",
                "0.1.0",
                "--model",
                "model/policy.pt",
                "--no-sign",
                "--json",
                *common,
            ).stdout
        )
        head = _git(user, "rev-parse", "HEAD")
        assert released["git_sha"] == head
        manifest = json.loads((user / "releases" / "0.1.0.json").read_text())
        assert manifest["images"]["runtime"]["digest"] == released["images"]["runtime"]["digest"]
        rt = manifest["images"]["runtime"]
        assert (
            _config_labels(f"{rt['repository']}@{rt['digest']}")["org.opencontainers.image.revision"] == head
        )
    finally:
        for name in ("converter", "runtime"):
            delete_tags(docker_host, f"{prefix}/{name}", None)

    # working files went to EDGE_DEPLOY_HOME: nothing was written into the package or the user's directory
    shipped_after = sorted(
        p.relative_to(site) for p in (site / "edge_deploy").rglob("*") if "__pycache__" not in p.parts
    )
    assert shipped_after == shipped_before
    assert not (user / ".edge").exists()
