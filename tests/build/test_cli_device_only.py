"""``edge-deploy`` installed from its wheel with only the `[device]` extra (no torch, onnx, yaml, semver,
asyncssh, rich, httpx): --help lists every command, and a command that needs the host extra ends in one
sentence naming ``pip install 'edge-deploy[host]'``, a non-zero exit and no traceback.

The venv is real (``python -m venv``, then pip installs the wheel built from this checkout and the device
extra's packages from the package index or pip's cache) and lives outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["sample-model", "convert", "bench", "host", "image", "release", "fleet"]
HOST_SENTENCE = "which comes with the host extra: pip install 'edge-deploy[host]'."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding edge-deploy[device] from a wheel of this checkout; returns its bin directory."""
    base = tmp_path_factory.mktemp("device-only")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=300)
    pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = (base / "dist").glob("edge_deploy-*.whl")
    subprocess.run([*pip, "install", f"{wheel}[device]"], check=True, timeout=900)
    bin_dir = base / "venv" / "bin"
    missing = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.util as u; print([m for m in "
            "('torch', 'onnx', 'yaml', 'semver', 'asyncssh', 'rich', 'httpx') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]", f"the device-only venv holds host packages: {missing.stdout}"
    return bin_dir


def run(bin_dir: Path, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EDGE_DEBUG")}
    return subprocess.run(
        [str(bin_dir / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_command(device_venv: Path, tmp_path: Path) -> None:
    p = run(device_venv, "edge-deploy", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    for name in COMMANDS:
        assert f"\n  {name} " in p.stdout, name
    p = run(device_venv, "edge-deploy", "fleet", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "rollout" in p.stdout and "sim" in p.stdout, p.stderr
    p = run(device_venv, "edge-runtime", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "serve" in p.stdout, p.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "policy.pt", "-o", "bundle"],
        ["release", "list"],
        ["release", "--help"],
        ["fleet", "status"],
        ["fleet", "rollout", "0.1.0", "--dry-run"],
        ["sample-model", "-o", "policy2.pt"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_host_command_names_the_extra(device_venv: Path, tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "policy.pt").write_bytes(b"not loaded: the import of the host extra fails first")
    p = run(device_venv, "edge-deploy", *args, cwd=tmp_path)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert len(errors) == 1 and errors[0].startswith("error: this command needs "), p.stderr
    assert errors[0].endswith(HOST_SENTENCE), p.stderr
    assert not (tmp_path / "bundle").exists()


def test_old_spelling_names_the_extra_too(device_venv: Path, tmp_path: Path) -> None:
    p = run(device_venv, "edge-deploy", "status", cwd=tmp_path)
    lines = p.stderr.splitlines()
    assert p.returncode != 0 and len(lines) == 2, p.stderr
    assert lines[0].startswith("note: `edge-deploy status` is now `edge-deploy fleet status`")
    assert lines[1].endswith(HOST_SENTENCE)
