"""The runtime as a robot runs it, with real Docker (arm64 under QEMU): the compose bundle's hardening seen by
``docker inspect`` and from inside the running container, a hung engine that the restart policy brings back,
and every layer of the image (as ``docker image save`` exports it) scanned for secrets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import STANDIN, BuiltImage

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "compose.yaml"
SLOW_SERVE = REPO / "tests" / "runtime" / "fixtures" / "procs" / "slow_serve.py"
READY_TIMEOUT = 600.0  # the first start builds the engine under QEMU (minutes on a loaded 2-core host)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(*cmd: str, timeout: float = 900, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the compose bundle, up as on a robot --------------------------------------------------------------------
@dataclass
class Deployment:
    project: str
    port: int
    env: dict[str, str]
    files: list[Path]
    image: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [a for f in self.files for a in ("-f", str(f))]
        return sh(
            "docker", "compose", *files, "-p", self.project, *args, timeout=timeout, check=check, env=self.env
        )

    def container(self) -> str:
        return self.compose("ps", "-q", "edge-runtime").stdout.strip()

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(sh("docker", "inspect", self.container()).stdout)[0])


@pytest.fixture(scope="module")
def deployment(runtime_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """compose/compose.yaml as the rollout uses it (``up -d --wait``), pinned to the e2e runtime image."""
    port = free_port()
    env = {
        **os.environ,
        "EDGE_IMAGE": runtime_image.ref,
        "EDGE_PORT": str(port),
        "EDGE_HEALTH_START_INTERVAL": "1s",
        "EDGE_RELEASE": "e2e-hardening",
    }
    d = Deployment(f"edge-hard-{uuid.uuid4().hex[:6]}", port, env, [COMPOSE], runtime_image.ref)
    try:
        d.compose(
            "up", "-d", "--wait", "--wait-timeout", str(int(READY_TIMEOUT)), timeout=READY_TIMEOUT + 120
        )
        yield d
    finally:
        d.compose("logs", "--no-color", check=False)
        d.compose("down", "-v", "--timeout", "5", check=False, timeout=300)


PROBE = """
import errno, json, os
status = dict(line.split(":\\t", 1) for line in open("/proc/1/status").read().splitlines() if ":\\t" in line)
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
        os.remove(os.path.join(path, ".probe"))
        return "yes"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({
    "service_uid": status["Uid"].split()[0], "service_caps": status["CapEff"].strip(),
    "bounding_caps": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "probe_uid": os.getuid(),
    "writable": {p: writable(p) for p in ("/", "/opt/edge", "/etc", "/tmp", "/var/cache/edge")},
}))
"""


def test_running_container_is_non_root_read_only_without_capabilities(deployment: Deployment) -> None:
    info = deployment.inspect()
    config, host = info["Config"], info["HostConfig"]
    assert config["User"] == "1000:44", config["User"]  # compose's user: the image's service user
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"], host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "edge_runtime.healthcheck"]
    assert info["State"]["Health"]["Status"] == "healthy"
    # What the kernel enforces on the running service (PID 1), read from inside the container.
    out = sh("docker", "exec", deployment.container(), "python3", "-c", PROBE, timeout=300).stdout
    seen = json.loads(out)
    assert seen["service_uid"] == "1000" and seen["probe_uid"] == 1000, seen
    assert int(seen["service_caps"], 16) == 0 and int(seen["bounding_caps"], 16) == 0, seen
    assert seen["no_new_privs"] == "1", seen
    assert seen["writable"] == {
        "/": "EROFS",
        "/opt/edge": "EROFS",
        "/etc": "EROFS",
        "/tmp": "yes",  # the compose file's tmpfs
        "/var/cache/edge": "yes",  # the engine cache volume
    }, seen


def _npz(hang: bool) -> bytes:
    """A valid request for the sample policy; ``hang``: the one the slow_serve fixture holds (robot_state[0, 0] = 42)."""
    import io

    state = np.zeros((1, 48), np.float32)
    state[0, 0] = 42.0 if hang else 0.5
    buf = io.BytesIO()
    np.savez(buf, image=np.zeros((1, 3, 224, 224), np.float32), robot_state=state)
    return buf.getvalue()


def _die_events(container: str, since: str) -> list[dict[str, Any]]:
    until = f"{time.time():.3f}"
    out = sh(
        "docker",
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        f"container={container}",
        "--filter",
        "event=die",
        "--format",
        "{{json .}}",
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_hung_engine_fails_the_health_check_and_the_restart_policy_restarts_it(
    deployment: Deployment, tmp_path: Path, record_property: Any
) -> None:
    """The service with an engine call that never returns (the slow_serve fixture, mounted read-only, in
    front of the image's own edge-runtime): Docker's health check command fails from the deadline on, the
    process exits with status 75 after the default 2 s deadline + 10 s grace, and ``restart: unless-stopped``
    brings it back, ready from the cached engine. Records the times for docs/runtime.md."""
    fixture = tmp_path / "fixture"
    fixture.mkdir(mode=0o755)
    shutil.copy(SLOW_SERVE, fixture / "slow_serve.py")
    (fixture / "slow_serve.py").chmod(0o644)
    override = tmp_path / "hang.yaml"
    override.write_text(
        "services:\n"
        "  edge-runtime:\n"
        '    entrypoint: ["python3", "/fixture/slow_serve.py", "serve"]\n'
        "    environment:\n"
        '      EDGE_TEST_SLOW_S: "3600"\n'
        "    volumes:\n"
        f"      - {fixture}:/fixture:ro\n"
    )
    deployment.files = [COMPOSE, override]
    deployment.compose(
        "up", "-d", "--wait", "--wait-timeout", str(int(READY_TIMEOUT)), timeout=READY_TIMEOUT + 120
    )
    container = deployment.container()
    assert deployment.inspect()["RestartCount"] == 0
    since = f"{time.time():.3f}"

    def post_hung() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the process is gone before it answers
            httpx.post(
                deployment.url + "/v1/infer",
                content=_npz(hang=True),
                headers={"Content-Type": "application/x-npz"},
                timeout=120,
            )

    t0 = time.time()
    threading.Thread(target=post_hung, daemon=True).start()
    time.sleep(3.0)  # past the 2 s deadline
    check = sh(
        "docker", "exec", container, "python3", "-m", "edge_runtime.healthcheck", check=False, timeout=120
    )
    assert check.returncode == 1 and "HTTP 503" in check.stderr and "deadline" in check.stderr, check
    restarted = ready = None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and ready is None:
        if restarted is None and deployment.inspect()["RestartCount"] >= 1:
            restarted = time.time()
        if restarted is not None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(deployment.url + "/readyz", timeout=2).status_code == 200:
                    ready = time.time()
        time.sleep(0.2)
    assert restarted is not None and ready is not None, (restarted, ready)
    (died,) = _die_events(container, since)
    assert died["Actor"]["Attributes"]["exitCode"] == "75", died
    died_at = died["timeNano"] / 1e9
    logs = sh("docker", "logs", container, timeout=60).stderr
    assert "hung" in logs and "status 75" in logs and "Traceback" not in logs, logs[-3000:]
    startup = httpx.get(deployment.url + "/readyz", timeout=10).json()["startup"]
    assert startup["cache_hit"] is True, startup
    ok = httpx.post(
        deployment.url + "/v1/infer",
        content=_npz(hang=False),
        headers={"Content-Type": "application/x-npz"},
        timeout=120,
    )
    assert ok.status_code == 200, ok.text
    numbers = {
        "request_to_exit_s": died_at - t0,  # includes sending and decoding the request under QEMU
        "exit_to_ready_s": ready
        - died_at,  # Docker's restart, the process start and the cached engine's load
        "restarted_service_time_to_ready_s": startup["time_to_ready_s"],  # process start to /readyz 200
    }
    for key, value in numbers.items():
        record_property(key, round(value, 2))
    print("\nhung engine in the container (arm64 under QEMU):", {k: round(v, 1) for k, v in numbers.items()})


# -- every layer of the image, scanned for secrets -----------------------------------------------------------
PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n:, -]{40,}?)-----END \1-----")
SECRET_PATHS = re.compile(
    r"(^|/)(run/secrets/.*|\.ssh/id_[a-z0-9]+|\.netrc|\.git-credentials|\.pypirc|\.docker/config\.json"
    r"|pip\.conf|cosign\.key|[^/]+\.(key|p12|pfx))$"
)


@dataclass(frozen=True)
class Finding:
    layer: int
    path: str
    what: str


def _pem_bodies(data: bytes, kind: bytes) -> set[bytes]:
    return {re.sub(rb"\s", b"", m[2]) for m in PEM.finditer(data) if m[1] == kind}


def host_ca() -> tuple[str, set[bytes]]:
    """This build host's CA bundle (a build that reaches the package mirror over TLS mounts it as a secret;
    it may hold a private CA): its sha256 and its certificates, to find a copy in any layer."""
    data = HOST_CA.read_bytes()
    return hashlib.sha256(data).hexdigest(), _pem_bodies(data, b"CERTIFICATE")


def base_diff_ids(platform: str) -> set[str]:
    """The stand-in base's layers (uncompressed digests): they are the base's, not ours."""
    from tests.e2e.test_images import registry_get

    repo, tag = STANDIN.rsplit(":", 1)
    index = registry_get(repo, tag)
    arch = platform.split("/")[1]
    digest = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch)
    config = registry_get(repo, registry_get(repo, digest)["config"]["digest"], "blobs")
    return set(config["rootfs"]["diff_ids"])


def scan_saved_image(saved: Path, skip: set[str], ca: tuple[str, set[bytes]]) -> tuple[list[Finding], int]:
    """Walk every layer tar of a ``docker image save`` archive, whiteouts included (a file deleted in a later
    layer is still in the one that added it), for secret-looking paths, PEM private-key blocks and copies of
    the host's CA bundle (the same bytes, or the same certificates); layers in ``skip`` are the base's."""
    ca_sha, ca_certs = ca
    findings: list[Finding] = []
    files = 0
    with tarfile.open(saved) as image:
        manifest = json.load(image.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(image.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        for i, (blob, diff_id) in enumerate(
            zip(manifest["Layers"], config["rootfs"]["diff_ids"], strict=True)
        ):
            if diff_id in skip:
                continue
            with tarfile.open(fileobj=image.extractfile(blob), mode="r:*") as layer:
                for m in layer:
                    path = m.name.removeprefix("./").replace(".wh.", "")
                    if SECRET_PATHS.search(path):
                        findings.append(Finding(i, m.name, "secret-looking path"))
                    if not m.isfile():
                        continue
                    files += 1
                    data = layer.extractfile(m).read()  # type: ignore[union-attr]
                    findings += [
                        Finding(i, m.name, match[1].decode() + " block")
                        for match in PEM.finditer(data)
                        if b"PRIVATE KEY" in match[1]
                    ]
                    if hashlib.sha256(data).hexdigest() == ca_sha or (
                        b"-----BEGIN CERTIFICATE" in data and _pem_bodies(data, b"CERTIFICATE") == ca_certs
                    ):
                        findings.append(Finding(i, m.name, "the build host's CA bundle"))
    return findings, files


def save(ref: str, platform: str, dest: Path) -> Path:
    sh("docker", "pull", "--platform", platform, ref, timeout=900)
    sh("docker", "image", "save", "-o", str(dest), ref, timeout=900)
    return dest


def test_the_scanner_finds_a_secret_deleted_in_a_later_layer(docker_host: str, tmp_path: Path) -> None:
    """Control: an image that copies a private key and the host's CA bundle in one layer and deletes them in
    the next. The final filesystem has neither (``docker export`` would pass); its layers do."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    key_body = "\n".join(["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"] * 5)
    (ctx / "id_ed25519").write_text(
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{key_body}\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    shutil.copy(HOST_CA, ctx / "cacert")
    (ctx / "Dockerfile").write_text(
        f"FROM {STANDIN}\n"
        "COPY id_ed25519 /home/builder/.ssh/id_ed25519\n"
        "COPY cacert /tmp/build-ca.crt\n"
        "RUN rm -rf /home/builder /tmp/build-ca.crt\n"
    )
    tag = f"localhost:5000/edge-deploy/secret-scan-control:{uuid.uuid4().hex[:8]}"
    sh(
        "docker",
        "buildx",
        "build",
        "--load",
        "--platform",
        "linux/amd64",
        "--network",
        "host",
        "-t",
        tag,
        str(ctx),
        timeout=900,
    )
    try:
        final = sh(
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "ls /home/builder /tmp/build-ca.crt 2>&1; true",
            timeout=120,
        ).stdout
        assert "No such file" in final  # gone from what a container sees
        saved = tmp_path / "control.tar"
        sh("docker", "image", "save", "-o", str(saved), tag, timeout=300)
        findings, _files = scan_saved_image(saved, base_diff_ids("linux/amd64"), host_ca())
    finally:
        sh("docker", "image", "rm", tag, check=False, timeout=120)
    whats = {(f.path.removeprefix("./"), f.what) for f in findings}
    assert ("home/builder/.ssh/id_ed25519", "secret-looking path") in whats, findings
    assert ("home/builder/.ssh/id_ed25519", "OPENSSH PRIVATE KEY block") in whats, findings
    assert ("tmp/build-ca.crt", "the build host's CA bundle") in whats, findings


def test_runtime_image_layers_hold_no_secrets(
    runtime_image: BuiltImage, tmp_path: Path, record_property: Any
) -> None:
    saved = save(runtime_image.ref, "linux/arm64", tmp_path / "runtime.tar")
    skip = base_diff_ids("linux/arm64")
    findings, files = scan_saved_image(saved, skip, host_ca())
    record_property("runtime_files_scanned", files)
    assert files > 1000, files  # the venv, edge_runtime and the bundle were read, not skipped
    assert findings == [], findings
