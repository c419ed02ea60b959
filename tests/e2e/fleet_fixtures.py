"""What the fleet e2e tests share, so that each test sets up what it needs and any one of them runs alone.

Expensive parts are made once per session and reused: the runtime image (tests/e2e/conftest.py) and the
small images built on its layers (``FleetImages``: a label-only image per name, a release that crashes at
start, one that never turns healthy, and any image a test asks for by tag). A test file starts its own
simulated fleet (``sim_fleet``: real dockerd + sshd per robot, arm64 under QEMU) whose first rollout
puts the file's base release on every robot, once; a test then brings the robots it uses to a known
release (``SimFleet.at_base``, ``SimFleet.serving``) and registers the extra releases it needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_deploy.release.manifest import ReleaseManifest, load_release, save_release
from tests.support import need

REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")
REPO_NAME = "edge-deploy/fleet-test"
REPO = f"{REGISTRY}/{REPO_NAME}"
# Robots are Jetsons (arm64, under QEMU here); an amd64 runtime variant skips emulation on x86 hosts.
PLATFORM = os.environ.get("EDGE_TEST_PLATFORM", "linux/arm64")
HEALTH_TIMEOUT = 600.0  # a first start builds the engine under QEMU (minutes on a loaded 2-core host)
CRASH_MESSAGE = "model bundle unreadable: /opt/edge/bundle"


def sh(*cmd: str, timeout: float = 900, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def build(tag: str, dockerfile: str, files: dict[str, Path] | None = None) -> str:
    """Build a small ``PLATFORM`` image, push it as ``REPO:tag``, return repository@digest."""
    ctx = Path(tempfile.mkdtemp(prefix="edge-fleet-img-"))
    try:
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, src in (files or {}).items():
            shutil.copytree(src, ctx / name) if src.is_dir() else shutil.copy(src, ctx / name)
            os.chmod(ctx / name, 0o755)  # bundles are written private (0700); the service user must read them
        meta = ctx / "meta.json"
        sh(
            "docker",
            "buildx",
            "build",
            "--platform",
            PLATFORM,
            "--network",
            "host",
            "--provenance=false",
            "--push",
            "-t",
            f"{REPO}:{tag}",
            "--metadata-file",
            str(meta),
            str(ctx),
        )
        digest = json.loads(meta.read_text())["containerimage.digest"]
        return f"{REPO}@{digest}"
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


@dataclass
class FleetImages:
    """Images built FROM the runtime image, each at most once per session: they add no layer (or one
    small one), so a robot that has the runtime pulls only their manifest and config. Every image carries
    this session's id, so its digest is new (a signature made by an earlier run never covers it)."""

    runtime: str  # repository@digest of the runtime image
    session: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:8]}")
    refs: dict[str, str] = field(default_factory=dict)  # tag → repository@digest
    seconds: float = 0.0  # spent building them

    def image(self, name: str, dockerfile_tail: str, files: dict[str, Path] | None = None) -> str:
        """``FROM runtime`` + ``dockerfile_tail``, tagged ``<session>-<name>``; built on first use."""
        tag = f"{self.session}-{name}"
        if tag not in self.refs:
            t0 = time.monotonic()
            dockerfile = f'FROM {self.runtime}\nLABEL edge.test.session="{self.session}"\n{dockerfile_tail}'
            self.refs[tag] = build(tag, dockerfile, files)
            self.seconds += time.monotonic() - t0
        return self.refs[tag]

    def label(self, name: str) -> str:
        """The runtime as it is, under a digest of its own: a release that works."""
        return self.image(f"label-{name}", f'LABEL edge.test="{name}"\n')

    def crash(self) -> str:
        """Exits at start with its reason on stderr and exit code 1: never turns healthy."""
        return self.image(
            "crash", f'ENTRYPOINT ["python3", "-c", "import sys; sys.exit({CRASH_MESSAGE!r})"]\n'
        )

    def hang(self) -> str:
        """Starts and never listens (a process that ignores SIGTERM, too)."""
        return self.image("hang", 'ENTRYPOINT ["python3", "-c", "import time; time.sleep(10**6)"]\n')

    def tag(self, ref: str) -> str:
        """``REPO:tag`` of an image built here (the same image by tag instead of digest)."""
        return next(f"{REPO}:{t}" for t, r in self.refs.items() if r == ref)


def rollout(fleet: Path, version: str, releases: Path, **options: Any) -> dict[str, Any]:
    """``deploy_release`` as the tests need it, its summary as ``--json`` prints it. Signatures are
    checked only where a test passes ``public_key``; the others opt out as an operator would."""
    from edge_deploy.fleet import RolloutOptions, deploy_release

    options.setdefault("health_timeout_s", HEALTH_TIMEOUT)
    if options.get("public_key") is None:
        options.setdefault("insecure_skip_signature_check", True)
    if "devices" in options:
        options["devices"] = tuple(options["devices"])
    opts = RolloutOptions(version=version, releases_dir=releases, **options)
    return dict(deploy_release(fleet, opts).to_dict())


def why(summary: dict[str, Any]) -> str:
    """Each robot's outcome, stage and reason, for an assertion message."""
    return json.dumps(
        [{k: r.get(k) for k in ("robot", "outcome", "stage", "reason")} for r in summary["robots"]], indent=1
    )


def outcomes(summary: dict[str, Any]) -> dict[str, str]:
    return {r["robot"]: r["outcome"] for r in summary["robots"]}


@dataclass
class SimFleet:
    """One simulated fleet of a test file, with its releases directory and its base release."""

    sim: Any
    releases: Path
    images: FleetImages
    base: str  # the version the first rollout puts on every robot
    base_ref: str
    numbers: dict[str, Any]
    first: dict[str, Any] | None = None  # the summary of that first rollout

    @property
    def fleet(self) -> Path:
        return Path(self.sim.fleet_file)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.sim.robots]

    def robot(self, name: str | None = None) -> Any:
        return self.sim.robot(name) if name else self.sim.robots[0]

    def release(self, version: str, ref: str, **manifest: Any) -> str:
        """Write ``releases/<version>.json`` for ``ref`` (once; the same version for another image is a
        mistake in the test)."""
        if (self.releases / f"{version}.json").is_file():
            assert load_release(version, self.releases).runtime.ref == ref, f"{version} is another image"
            return version
        save_release(ReleaseManifest.for_runtime_image(version, ref, "test", **manifest), self.releases)
        return version

    def deploy(self, version: str, **options: Any) -> dict[str, Any]:
        return rollout(self.fleet, version, self.releases, **options)

    def status(self) -> dict[str, dict[str, Any]]:
        from edge_deploy.fleet import fleet_status

        return {r["robot"]: dict(r) for r in fleet_status(self.fleet)}

    def first_rollout(self) -> dict[str, Any]:
        """The base release on every robot of the fresh fleet (whole image, engine built on each robot),
        once per fleet; later calls return the same summary."""
        if self.first is None:
            self.release(self.base, self.base_ref)
            t0 = time.monotonic()
            self.first = self.deploy(self.base)
            self.numbers[f"first_rollout_{len(self.names)}_robots_s"] = round(time.monotonic() - t0, 1)
            assert self.first["ok"], why(self.first)
        return self.first

    def at_base(self, robots: Sequence[str] | None = None) -> None:
        """``robots`` (all by default) run the base release and are healthy; only those that do not are
        updated (a switch: the base release's image and engine are still on them)."""
        self.first_rollout()
        st = self.status()
        todo = [
            n for n in robots or self.names if (st[n]["version"], st[n]["health"]) != (self.base, "healthy")
        ]
        if todo:
            out = self.deploy(self.base, devices=todo)
            assert set(outcomes(out).values()) <= {"updated", "unchanged"}, why(out)

    def serving(self, robots: Sequence[str] | None = None) -> dict[str, str]:
        """``robots`` run some release and are healthy (those that are not go back to the base release);
        returns each robot's version."""
        self.first_rollout()
        st = self.status()
        sick = [n for n in robots or self.names if st[n]["health"] != "healthy"]
        if sick:
            self.at_base(sick)
            st = self.status()
        return {n: str(st[n]["version"]) for n in robots or self.names}

    def docker(self, name: str | None, *args: str) -> str:
        """``docker`` on one robot's own engine: what it printed (a container's log is on both streams)."""
        p = sh("docker", "-H", f"unix://{self.robot(name).socket}", *args, timeout=120)
        return p.stdout + p.stderr

    def running_release(self, name: str | None = None) -> str:
        """EDGE_RELEASE of the robot's running service container, asked of its own engine."""
        # the service's container in whichever project runs it (edge, or edge-b after a hand-over)
        ids = self.docker(
            name,
            "ps",
            "-q",
            "--filter",
            "label=com.docker.compose.service=edge-runtime",
            "--filter",
            "label=com.docker.compose.oneoff=False",
        ).split()
        assert ids, "no container runs on the robot"
        env = self.docker(name, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", ids[0])
        return next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith("EDGE_RELEASE="))

    def home(self, name: str | None = None) -> Path:
        """The robot's compose directory (~/edge)."""
        return Path(self.robot(name).home) / "edge"

    def state(self, name: str | None = None) -> dict[str, Any]:
        p = self.home(name) / "state.json"
        return dict(json.loads(p.read_text())) if p.is_file() else {}

    def infer(self, name: str) -> list[int]:
        """The action shape of one inference on the robot, with the health gate's own smoke check."""
        import httpx

        from edge_deploy.fleet.gate import ready_check, served_model, smoke_check

        async def one() -> list[int]:
            port = self.robot(name).service_port  # robots share the host's network namespace
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                outputs, _ = await smoke_check(http, served_model(await ready_check(http)))
            return list(outputs["action"]["shape"])

        return asyncio.run(one())


def need_fleet_host() -> None:
    """Root and the dockerd of scripts/host-setup: simulated robots are users, dockerd and sshd."""
    from edge_deploy.simulation.simulate import host_bin

    need(os.geteuid() == 0, "root (simulated robots are users, dockerd and sshd)")
    need(host_bin() is not None, "dockerd from scripts/host-setup (EDGE_HOST_BIN)")


@contextlib.contextmanager
def sim_fleet(
    images: FleetImages,
    work: Path,
    robots: int,
    name: str,
    *,
    base: str,
    base_ref: str,
    title: str,
    **options: Any,
) -> Iterator[SimFleet]:
    """A fresh simulated fleet of ``robots`` for one test file (its own ports in ``options``), stopped and
    purged afterwards; the numbers its tests record are printed at the end (``-s``)."""
    from edge_deploy.simulation import simulate as sim

    need_fleet_host()
    numbers: dict[str, Any] = {}
    try:
        with sim.simulated(robots, name, registry=REGISTRY, platform=PLATFORM, **options) as s:
            yield SimFleet(s, work / "releases", images, base, base_ref, numbers)
    finally:
        if numbers:
            print(f"\n{title} numbers:", json.dumps(numbers, indent=2))
