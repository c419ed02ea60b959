"""The host harness (scripts/host-setup, scripts/host-teardown) on this machine: contract, idempotency, PIDs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edge_deploy.images import tool_files
from tests.e2e.conftest import STANDIN
from tests.support import need

pytestmark = [pytest.mark.docker]

SETUP = tool_files().path("scripts/host-setup")
TEARDOWN = tool_files().path("scripts/host-teardown")
PRUNE = Path(__file__).resolve().parents[2] / "scripts" / "host-prune"  # checkout-only (not shipped)
CONTRACT_KEYS = ("EDGE_HOST_BIN", "EDGE_HOST_STATE", "EDGE_HOST_PREFIX", "EDGE_REGISTRY", "EDGE_STATE")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_KEYS and not k.startswith("EDGE_HOST_")}
    env.update(extra)
    return env


def host_env() -> dict[str, str]:
    out = subprocess.run(
        [str(SETUP), "--env"], capture_output=True, text=True, timeout=30, env=_clean_env(), check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_env_prints_the_contract_other_tools_read() -> None:
    env = host_env()
    assert env["EDGE_HOST_BIN"] == "/opt/edge-deploy/host/bin"
    assert env["EDGE_REGISTRY"] == "localhost:5000"
    assert env["EDGE_STATE"] == "/var/lib/edge-deploy/host"
    assert env["EDGE_L4T_BASE"].startswith("localhost:5000/edge-deploy/")


def _lock_holders(lock: Path) -> list[str]:
    """Processes with `lock` open (a daemon that inherited host-setup's lock fd would block every later run)."""
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or not ours to read
            continue
        if str(lock) in fds:
            holders.append(f"{proc.name} ({cmd})")
    return holders


def test_daemons_started_by_setup_do_not_hold_its_lock(docker_host: str) -> None:
    need(os.geteuid() == 0, "root (to read other processes' open files)")
    state = Path(host_env()["EDGE_STATE"])
    assert _lock_holders(state / ".setup.lock") == []


def test_setup_again_is_fast_and_leaves_the_running_engine_alone(docker_host: str) -> None:
    need(os.geteuid() == 0, "root (host-setup installs packages and starts daemons)")
    state = Path(host_env()["EDGE_STATE"])
    assert _lock_holders(state / ".setup.lock") == [], "a running process holds host-setup's lock"
    pids_before = {p.name: p.read_text() for p in state.glob("*.pid")}
    t0 = time.monotonic()
    out = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=120, env=_clean_env())
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert seconds < 15, f"host-setup took {seconds:.1f} s with everything present"
    assert "ready:" in out.stderr
    assert {p.name: p.read_text() for p in state.glob("*.pid")} == pids_before
    check = subprocess.run(
        [str(SETUP), "--check"], capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    assert check.returncode == 0, check.stderr
    assert "missing" not in check.stderr


def test_setup_installs_into_a_fresh_prefix_from_the_package_mirror(docker_host: str, tmp_path: Path) -> None:
    """The install path a fresh machine takes (download + unpack), into a temporary prefix; the running
    engine and registry are only checked."""
    need(os.geteuid() == 0, "root (host-setup installs packages)")
    where = {k: str(tmp_path / k.lower()) for k in ("PREFIX", "STATE", "CACHE", "PLUGINS")}
    # the install path even though this machine's engine and tools are present (they are used otherwise)
    env = _clean_env(**{f"EDGE_HOST_{k}": v for k, v in where.items()}, EDGE_HOST_USE_PRESENT="0")
    out = subprocess.run([str(SETUP), "--no-bases"], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr
    assert "downloading" in out.stderr and "already running" in out.stderr
    bin_dir = Path(where["PREFIX"]) / "bin"
    for tool in ("dockerd", "containerd", "containerd-shim-runc-v2", "qemu-aarch64", "cosign", "docker-init"):
        assert os.access(bin_dir / tool, os.X_OK), tool
    plugins = Path(where["PLUGINS"])
    assert os.access(plugins / "docker-buildx", os.X_OK) and os.access(plugins / "docker-compose", os.X_OK)
    dockerd = subprocess.run(
        [str(bin_dir / "dockerd"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert re.search(r"\b26\.\d+\.\d+", dockerd.stdout), dockerd.stdout
    assert not list(Path(where["STATE"]).glob("*.pid")), "nothing was started: the running engine was kept"


def test_installed_versions_match_the_verified_set(docker_host: str) -> None:
    bin_dir = Path(host_env()["EDGE_HOST_BIN"])

    def version(*cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=True).stdout

    assert re.search(r"\b26\.\d+\.\d+", version(str(bin_dir / "dockerd"), "--version"))
    assert "version 10." in version(str(bin_dir / "qemu-aarch64"), "--version")
    assert re.search(r"\bv?0\.\d+\.\d+", version("docker", "buildx", "version"))
    assert re.search(r"v?2\.\d+", version("docker", "compose", "version", "--short"))
    assert "GitVersion" in version(str(bin_dir / "cosign"), "version")
    assert (bin_dir / "docker-init").exists()
    init = subprocess.run(
        ["docker", "run", "--rm", "--init", "--network", "none", STANDIN, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr  # `docker run --init` finds docker-init
    assert Path("/usr/sbin/sshd").exists() and Path("/run/sshd").is_dir()
    info = version("docker", "info", "--format", "{{json .DriverStatus}}")
    assert "snapshotter" in info, "containerd image store"


def test_qemu_runs_arm64_containers_with_the_f_flag(docker_host: str) -> None:
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text()
    assert "enabled" in entry
    assert re.search(r"^flags: .*F", entry, re.M)
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            "linux/arm64",
            STANDIN,
            "python3",
            "-c",
            "import platform, sys; print(platform.machine(), sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "aarch64"


def _spawn(path: Path) -> subprocess.Popen[bytes]:
    # a shell loop (not exec) keeps the script's name in /proc/PID/cmdline, as a real daemon's would be
    path.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    path.chmod(0o755)
    return subprocess.Popen([str(path)], start_new_session=True)


def test_teardown_stops_only_the_recorded_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    recorded = _spawn(tmp_path / "dockerd")  # the "engine" setup would have recorded
    bystander = _spawn(tmp_path / "docker-registry")  # a registry someone else started: not recorded
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a reused PID
    try:
        (state / "dockerd.pid").write_text(f"{recorded.pid}\n")
        (state / "registry.pid").write_text(f"{unrelated.pid}\n")
        out = subprocess.run(
            [str(TEARDOWN)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(EDGE_HOST_STATE=str(state)),
        )
        assert out.returncode == 0, out.stderr
        assert recorded.wait(timeout=30) is not None
        assert bystander.poll() is None
        assert unrelated.poll() is None, "a PID that is no longer the registry is left alone"
        assert not list(state.glob("*.pid"))
        assert f"stopped dockerd (pid {recorded.pid})" in out.stdout
    finally:
        for p in (recorded, bystander, unrelated):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


def test_prune_removes_matching_registry_repositories_and_keeps_the_rest(docker_host: str) -> None:
    import httpx

    need(os.geteuid() == 0, "root (host-prune stops and starts the registry)")
    env = host_env()
    state = Path(env["EDGE_STATE"])
    registry = f"http://{env['EDGE_REGISTRY_ADDR']}"
    pid_file = state / "registry.pid"
    need(pid_file.exists(), "a registry started by scripts/host-setup (host-prune leaves any other alone)")
    old_pid = pid_file.read_text().strip()
    repo = f"edge-deploy-prunetest-{uuid.uuid4().hex[:8]}/base"
    # A copy of the stand-in base's index with an annotation of its own: a manifest only this repo holds.
    subprocess.run(
        [
            "docker",
            "buildx",
            "imagetools",
            "create",
            "--annotation",
            f"index:org.example.prunetest={repo}",
            "-t",
            f"{docker_host}/{repo}:1",
            STANDIN,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    manifest_accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    digest = httpx.head(f"{registry}/v2/{repo}/manifests/1", headers=accept, timeout=30).headers[
        "Docker-Content-Digest"
    ]
    root = next(
        line.split(":", 1)[1].strip()
        for line in (state / "registry.yml").read_text().splitlines()
        if "rootdirectory:" in line
    )
    blob = Path(root) / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    assert blob.exists()

    out = subprocess.run(
        [str(PRUNE), "--no-images", "--repos", repo.split("/")[0]],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert out.returncode == 0, out.stderr
    assert httpx.get(f"{registry}/v2/", timeout=30).status_code == 200, "the registry is back"
    assert pid_file.read_text().strip() != old_pid
    assert _lock_holders(state / ".setup.lock") == []
    assert not (Path(root) / "docker/registry/v2/repositories" / repo).exists()
    assert httpx.head(f"{registry}/v2/{repo}/manifests/1", headers=accept, timeout=30).status_code == 404
    assert not blob.exists(), "garbage collection removed the manifest only the deleted repository held"
    # Everything else is intact, multi-platform indexes included (their platform manifests are untagged).
    base_repo, base_tag = STANDIN.split("/", 1)[1].rsplit(":", 1)
    index = httpx.get(f"{registry}/v2/{base_repo}/manifests/{base_tag}", headers=accept, timeout=30).json()
    platforms = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert {"amd64", "arm64"} <= set(platforms)
    for child in platforms.values():  # untagged per-platform manifests survive the collection
        assert (
            httpx.head(
                f"{registry}/v2/{base_repo}/manifests/{child}", headers=manifest_accept, timeout=30
            ).status_code
            == 200
        )
    pulled = subprocess.run(
        ["docker", "pull", "--platform", "linux/arm64", "-q", STANDIN],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr


def test_prune_refuses_bad_options_in_one_sentence() -> None:
    out = subprocess.run([str(PRUNE), "--keep-cache", "lots"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert out.stderr.strip() == "host-prune: error: --keep-cache takes a size such as 10GB, not 'lots'."
