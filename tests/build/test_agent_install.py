"""The robot agent installs and imports without the host side: ``edge-deploy[agent]`` from a wheel of this
checkout into a fresh venv (no torch, no onnx, no onnxruntime), where ``edge-deploy agent`` and ``python
-m edge_deploy.agent`` run; and importing the agent in this checkout's venv loads none of them either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon", "starlette", "uvicorn")
AGENT_IMPORTS = (
    "edge_deploy.cli.agent",
    "edge_deploy.agent.config",
    "edge_deploy.agent.local",
    "edge_deploy.agent.loop",
    "edge_deploy.release.channel",
    "edge_deploy.fleet.telemetry",
)


def test_importing_the_agent_loads_no_torch_or_onnx() -> None:
    code = (
        f"import sys\nfor m in {AGENT_IMPORTS!r}: __import__(m)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert p.stdout.strip() == "[]", p.stdout


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding edge-deploy[agent] from a wheel of this checkout; returns its bin directory."""
    base = tmp_path_factory.mktemp("agent-only")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=300)
    pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = (base / "dist").glob("edge_deploy-*.whl")
    subprocess.run([*pip, "install", f"{wheel}[agent]"], check=True, timeout=900)
    return base / "venv" / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EDGE_DEBUG")}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_agent_extra_alone_runs_the_agent(agent_venv: Path, tmp_path: Path) -> None:
    python = str(agent_venv / "python")
    p = run(
        agent_venv,
        python,
        "-c",
        f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])",
        cwd=tmp_path,
    )
    assert p.stdout.strip() == "[]", f"the agent-only venv holds host packages: {p.stdout}{p.stderr}"
    p = run(agent_venv, python, "-c", f"for m in {AGENT_IMPORTS!r}: __import__(m)", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = run(agent_venv, str(agent_venv / "edge-deploy"), "agent", "run", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "--once" in p.stdout, p.stderr
    p = run(agent_venv, python, "-m", "edge_deploy.agent", "run", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "--config" in p.stdout, p.stderr
    (tmp_path / "agent.yaml").write_text("robot: arm-1\nrepository: 127.0.0.1:5000/fleet/runtime\n")
    p = run(
        agent_venv,
        str(agent_venv / "edge-deploy"),
        "agent",
        "run",
        "--config",
        "agent.yaml",
        "--once",
        cwd=tmp_path,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "error: Agent config agent.yaml has no 'public_key'.", p.stderr


def test_a_missing_package_of_the_agent_extra_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_deploy.cli.agent as agent_cli
    from tests.build.cli_helpers import run_cli

    monkeypatch.setattr(agent_cli, "AGENT_MODULES", (*agent_cli.AGENT_MODULES, "edge_not_installed_pkg"))
    code, out, err = run_cli(capsys, "agent", "run", "--config", str(tmp_path / "a.yaml"), "--once")
    assert code != 0 and out == ""
    assert err.strip() == (
        "error: the agent needs edge_not_installed_pkg, which come with the agent extra: "
        "pip install 'edge-deploy[agent]'."
    ), err
