"""What one update does on one robot, over SSH.

Layout under the robot's compose directory (``~/edge`` unless the inventory says otherwise)::

    releases/<version>/{compose.yaml, compose.*.yaml, .env, release.json}
    current -> releases/<version>     switched atomically (ln -s tmp && mv -T)
    state.json                        current / previous version, last result
    history.jsonl                     one line per deploy, rollback and automatic rollback
    bad-versions                      versions that failed their health gate here (skipped unless forced)
    update.lock                       flock'ed by the robot's application while it must not be disturbed

Every step that can fail does so before ``current`` moves (disk, lock, upload, pull), or is undone by
switching back to the previous release and bringing it up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot, compose_dir_problem
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.ssh import RobotConnection, RobotUnreachable, backoff, q
from edge_deploy.release.tags import VersionError, check_version
from edge_runtime.errors import EdgeError

log = logging.getLogger(__name__)

PROJECT = "edge"
SERVICE = "edge-runtime"
COMPOSE_FILES = ("compose.yaml", "compose.jetson.yaml", "compose.ros2.yaml")
SYSTEMD_UNIT = "edge-deploy.service"
# The robot-side program that owns a switch (compose/edge-update.sh): switch, up --wait, wait for the
# operator's confirmation, else restore; it survives the operator's SSH connection.
UPDATE_SCRIPT = "edge-update.sh"
# state.json's last_result while edge-update.sh owns the robot, and once it has decided.
PENDING = ("switching", "awaiting_confirm", "reverting")
SETTLED = ("updated", "rolled_back", "reverted", "failed", "skipped")
POLL_S = 1.0  # how often the operator reads the robot's state while edge-update.sh runs

# Outcomes of one robot in a rollout or rollback.
UPDATED = "updated"  # now on the new version and healthy
UNCHANGED = "unchanged"  # was already on the version and healthy
ROLLED_BACK = "rolled_back"  # new version failed its gate; previous release restored
FAILED = "failed"  # failed before switching (pull, upload) or could not be restored
SKIPPED = "skipped"  # update lock held, version marked bad here
REFUSED = "refused"  # disk too full, host key, signature
UNREACHABLE = "unreachable"
NOT_REACHED = "not_reached"  # the rollout stopped before this robot's wave
PLANNED = "planned"  # dry run
FAILURES = {ROLLED_BACK, FAILED, REFUSED, UNREACHABLE}
# Putting the previous release back must not give up as early as a short --health-timeout for the new one:
# its engine is cached, but a loaded robot (or QEMU) can still take minutes to report healthy.
RESTORE_TIMEOUT_S = 300.0
ENGINE_VOLUME = f"{PROJECT}_engine-cache"  # compose.yaml's named volume in project "edge"
# `docker pull` on the robot: a registry or link hiccup is retried with backoff; a refusal is final.
PULL_ATTEMPTS = 3
RETRY_WAIT_S = 2.0  # the first backoff; it doubles per retry (2 s, 4 s)
PULL_IS_FINAL = (
    "unauthorized",
    "denied",
    "authentication required",
    "manifest unknown",
    "name unknown",
    "no matching manifest",
    "invalid reference format",
    "not found",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RobotResult:
    """What happened on one robot; the rollout's JSON summary is a list of these."""

    robot: str
    version: str
    outcome: str
    reason: str = ""
    previous: str | None = None
    stage: str = ""  # the step that decided the outcome
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    uploaded_bytes: int = 0
    engine: dict[str, Any] = field(default_factory=dict)  # the pre-built engine: hit, build_seconds, key
    retries: dict[str, int] = field(default_factory=dict)  # step ("connect", "pull") → retries it took

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GateFailed(FleetError):
    """The new release did not pass the health gate."""


class EngineBuildFailed(FleetError):
    """The release's engine build itself failed on the robot (edge-runtime ended with its one-sentence error
    and exit code): deterministic for this model on this device, so the version is marked bad there."""


class _PullHiccup(FleetError):
    """A pull that failed in a way worth another try (registry 5xx, reset or timed-out connection)."""


def release_dir_name(robot: Robot, version: object) -> str:
    """``version`` as a directory name under ``releases/``: only a semantic version is one (a robot's own
    state.json is input too)."""
    try:
        return check_version(version)
    except VersionError as exc:
        raise FleetError(f"Robot {robot.name}: {exc}") from None


def compose_bundle_dir() -> Path:
    """The compose/ files shipped with the tool (package data in a wheel, the repository's compose/ in a
    checkout)."""
    packaged = resources.files("edge_deploy").joinpath("compose_bundle")
    if packaged.is_dir():
        return Path(str(packaged))
    here = Path(__file__).resolve().parents[3] / "compose"
    if (here / "compose.yaml").is_file():
        return here
    raise FleetError("The robot compose bundle (compose/compose.yaml) is not installed with edge-deploy.")


def env_file(robot: Robot, req: DeployRequest) -> str:
    files = ["compose.yaml"]
    if robot.gpu:
        files.append("compose.jetson.yaml")
    if req.include_ros2:
        files.append("compose.ros2.yaml")
    lines = [
        "# Written by edge-deploy rollout; pin another digest here and `docker compose up -d` to roll back.",
        f"EDGE_IMAGE={req.image}",
        f"EDGE_RELEASE={req.version}",
        f"EDGE_PLATFORM={robot.platform}",
        f"EDGE_PORT={robot.service_port}",
        f"EDGE_HEALTH_START_INTERVAL={robot.health_start_interval_s * 1000:.0f}ms",
        f"COMPOSE_FILE={':'.join(files)}",
        f"COMPOSE_PROJECT_NAME={PROJECT}",
        f"EDGE_ROS2={1 if req.include_ros2 else 0}",
        f"ROS_DOMAIN_ID={req.ros_domain_id}",
    ]
    return "\n".join(lines) + "\n"


def bundle_files(robot: Robot, req: DeployRequest) -> dict[str, bytes]:
    src = compose_bundle_dir()
    files = {name: (src / name).read_bytes() for name in COMPOSE_FILES if (src / name).is_file()}
    files[".env"] = env_file(robot, req).encode()
    release = {
        "version": req.version,
        "image": req.image,
        "robot": robot.name,
        "deployed_at": now_iso(),
        "required_backend": req.required_backend,  # a later rollback to this release gates on it too
        **req.release,
    }
    files["release.json"] = (json.dumps(release, indent=2) + "\n").encode()
    return files


def smoke_inputs(metadata: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 input arrays for whatever model the robot serves, made from that model's own metadata
    (``GET /v2/models/NAME``): dynamic dimensions are 1, floating-point inputs get deterministic values in
    [0, 1), integer and boolean inputs zeros."""
    import numpy as np

    from edge_runtime import oip

    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for spec in metadata.get("inputs") or []:
        shape = tuple(1 if d < 0 else int(d) for d in spec["shape"])
        try:
            dtype = oip.numpy_dtype(spec["datatype"])
        except KeyError:
            raise GateFailed(
                f"the model's input {spec['name']!r} has datatype {spec['datatype']}, which the smoke "
                "inference cannot fill"
            ) from None
        feeds[spec["name"]] = (
            rng.random(shape).round(3).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        )
    return feeds


def check_smoke_answer(metadata: dict[str, Any], answer: Any) -> dict[str, dict[str, Any]]:
    """The answer's outputs by name (``shape``, ``datatype``, ``data``); raises GateFailed unless every
    output the model declares came back with its declared shape (dynamic dimensions 1) and finite values."""
    import numpy as np

    got = {o.get("name"): o for o in (answer.get("outputs") or [])} if isinstance(answer, dict) else {}
    for spec in metadata.get("outputs") or []:
        out = got.get(spec["name"])
        if not isinstance(out, dict):
            raise GateFailed(f"smoke inference returned no output {spec['name']!r}")
        expected = [1 if d < 0 else int(d) for d in spec["shape"]]
        if list(out.get("shape") or []) != expected:
            raise GateFailed(
                f"smoke inference returned {spec['name']} of shape {out.get('shape')}, expected {expected}"
            )
        values = np.asarray(out.get("data") or [], dtype=np.float64)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise GateFailed(f"smoke inference returned non-finite values in {spec['name']}")
    return got


async def smoke_check(http: Any, model: str) -> tuple[dict[str, dict[str, Any]], float]:
    """One inference through ``http`` (an httpx.AsyncClient on the service) with an input made from the
    served model's own metadata; its checked outputs and the round trip in seconds."""
    from edge_runtime import oip

    meta = await http.get(f"/v2/models/{model}")
    if meta.status_code != 200:
        raise GateFailed(f"model metadata answered {meta.status_code}: {meta.text[:150]}")
    metadata = meta.json()
    # Binary tensors in (no JSON for a camera frame), JSON out (small, and checked value by value).
    body, header_length = oip.encode_request(smoke_inputs(metadata), binary=True, binary_output=False)
    headers = {} if header_length is None else {oip.HEADER_LENGTH: str(header_length)}
    t0 = time.monotonic()
    resp = await http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    seconds = time.monotonic() - t0
    if resp.status_code != 200:
        raise GateFailed(f"smoke inference answered {resp.status_code}: {resp.text[:150]}")
    return check_smoke_answer(metadata, resp.json()), seconds


async def ready_check(http: Any) -> dict[str, Any]:
    """``GET /readyz`` must answer 200 with ``ready: true``; returns its body."""
    ready = await http.get("/readyz")
    try:
        body = ready.json()
    except ValueError:
        body = {"text": ready.text[:200]}
    if ready.status_code != 200 or not (isinstance(body, dict) and body.get("ready")):
        raise GateFailed(f"/readyz answered {ready.status_code}: {str(body)[:150]}")
    return body


def expected_backend(robot: Robot, required: str | None) -> tuple[str | None, str]:
    """The backend ``robot`` must serve a release with (None: any will do) and why, from the release's
    ``required_backend`` and the robot's inventory: a robot that should run TensorRT must not pass its gate
    while serving ONNX Runtime on the CPU, unless that is allowed on purpose."""
    if required == "tensorrt":
        return "tensorrt", "the release requires TensorRT"
    if required == "any":
        return None, "the release accepts ONNX Runtime on the CPU"
    if robot.gpu and not robot.allow_cpu_fallback:
        return "tensorrt", "the robot has gpu: true in fleet.yaml"
    if robot.gpu:
        return None, "the robot has allow_cpu_fallback: true in fleet.yaml"
    return None, "the robot has gpu: false in fleet.yaml"


def backend_check(ready: dict[str, Any], expected: str | None, because: str) -> None:
    """Raise GateFailed unless the service reports ``expected`` as its backend; the reason names both
    backends and the service's own sentence for why it did not serve the expected one."""
    if expected is None:
        return
    served = ready.get("backend")
    if served == expected:
        return
    if not served:
        raise GateFailed(
            f"expected backend {expected} ({because}), but /readyz does not say which backend serves "
            "(an edge-runtime older than this tool)"
        )
    served, requested = str(served)[:40], str(ready.get("backend_requested") or "")[:40]  # the robot's text
    where = " on the CPU" if served == "onnxruntime" else ""
    if ready.get("fallback"):
        said = f"the service says: {str(ready['fallback'])[:300].rstrip('.')}"
    elif requested and requested != "auto":
        said = f"the service was started with --backend {requested} (EDGE_BACKEND)"
    else:
        said = "the service did not say why (an edge-runtime older than this tool)"
    allow = (
        "no inventory setting allows it (the release was made with --required-backend tensorrt)"
        if because.startswith("the release")
        else "to allow it on purpose, set allow_cpu_fallback: true for the robot in fleet.yaml or release "
        "with --required-backend any"
    )
    raise GateFailed(f"expected backend {expected} ({because}), served {served}{where}: {said}; {allow}")


def served_model(ready: dict[str, Any]) -> str:
    """The model name a ready service reports (its path under /v2/models/)."""
    if not ready.get("model"):
        raise GateFailed("/readyz does not name the model it serves (an edge-runtime older than this tool)")
    return str(ready["model"])


class RobotReleases:
    """The release store on one robot: deploy, roll back, report status and history."""

    def __init__(self, conn: RobotConnection, retries: dict[str, int] | None = None) -> None:
        self.conn = conn
        self.robot = conn.robot
        self.dir = q(self.robot.compose_dir)
        self.retries = retries if retries is not None else {}  # shared with connect(): step → retries
        self._lock_proc: Any = None  # the channel holding update.lock, while held

    def _release(self, version: object) -> str:
        """The shell-quoted path of one release's directory."""
        return f"{self.dir}/releases/{q(release_dir_name(self.robot, version))}"

    # --- small remote helpers -------------------------------------------------------------------------
    async def read_state(self) -> dict[str, Any]:
        r = await self.conn.run(f"cat {self.dir}/state.json 2>/dev/null || true", timeout=30)
        try:
            data = json.loads(r.stdout) if r.stdout.strip() else {}
        except json.JSONDecodeError:
            data = {}
        return data if isinstance(data, dict) else {}

    async def write_state(self, state: dict[str, Any]) -> None:
        state = {**state, "updated": now_iso()}
        await self._write_text("state.json", json.dumps(state, indent=2) + "\n")

    async def _write_text(self, name: str, text: str, append: bool = False) -> None:
        """Over SFTP: the content never passes through the robot's shell."""
        await self.conn.write_file(f"{self.robot.compose_dir}/{name}", text.encode(), append=append)

    async def append_history(self, entry: dict[str, Any]) -> None:
        await self._write_text("history.jsonl", json.dumps({"at": now_iso(), **entry}) + "\n", append=True)

    async def bad_versions(self) -> set[str]:
        r = await self.conn.run(f"cat {self.dir}/bad-versions 2>/dev/null || true", timeout=30)
        return {line.strip() for line in r.stdout.splitlines() if line.strip()}

    async def mark_bad(self, version: str) -> None:
        if version not in await self.bad_versions():
            await self._write_text("bad-versions", version + "\n", append=True)

    async def free_space(self) -> list[tuple[str, str, int]]:
        """``(what, path, free MB)`` for each filesystem an update writes to: the compose directory (release
        files), Docker's data root (``docker info``: pulled layers, containers) and the engine-cache volume's
        mountpoint (the engine build), as the robot's user sees them. A path that user cannot reach (the
        volume under a root-only data root) is measured at its nearest reachable folder, which is the
        same filesystem unless a mount lies in between; a volume not created yet will live in the data
        root."""
        out = await self.conn.check(
            f"mkdir -p {self.dir}/releases && "
            "{ printf 'root='; docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo; "
            f"printf 'volume='; docker volume inspect --format '{{{{.Mountpoint}}}}' {ENGINE_VOLUME} 2>/dev/null "
            "|| echo; }",
            "finding Docker's data root",
            timeout=60,
        )
        found = dict(line.split("=", 1) for line in out.splitlines() if line.startswith(("root=", "volume=")))
        targets = [("the compose directory", self.robot.compose_dir)]
        for key, what in (("root", "Docker's data root"), ("volume", f"the {ENGINE_VOLUME} volume")):
            path = found.get(key, "").strip()
            if path.startswith("/") and "\t" not in path:  # quoted below; a tab would break the parsing
                targets.append((what, path))
        candidates = {what: [p, *(str(a) for a in PurePosixPath(p).parents)] for what, p in targets}
        paths = list(dict.fromkeys(c for cs in candidates.values() for c in cs))
        out = await self.conn.check(
            f"for p in {' '.join(q(p) for p in paths)}; do "
            'a=$(df -Pk -- "$p" 2>/dev/null | awk \'NR==2 {print $4}\'); printf \'%s\\t%s\\n\' "$p" "$a"; done',
            "the disk check",
            timeout=60,
        )
        avail = {}
        for line in out.splitlines():
            path, _, kb = line.partition("\t")
            if kb.strip().isdigit():
                avail[path] = int(kb) // 1024
        measured = []
        for what, _ in targets:
            at = next((c for c in candidates[what] if c in avail), None)
            if at is not None:
                measured.append((what, at, avail[at]))
        if not measured:
            raise FleetError(f"Robot {self.robot.name}: cannot read free disk space from df ({out[:80]!r}).")
        return measured

    @contextlib.asynccontextmanager
    async def update_lock(self, wait_s: float) -> AsyncIterator[bool]:
        """Hold ``update.lock`` (flock) for the whole update; yields False when the robot's application kept
        it for longer than ``wait_s``. The lock is released when the SSH channel closes, even if we die."""
        lock = f"{self.dir}/update.lock"
        cmd = (
            f"mkdir -p {self.dir} && exec flock -w {wait_s:g} {lock} sh -c 'echo locked; exec cat >/dev/null'"
        )
        try:
            proc = await self.conn.conn.create_process(cmd)
        except (OSError, asyncssh.Error) as exc:
            raise RobotUnreachable(f"Robot {self.robot.name}: the SSH connection broke ({exc}).") from None
        self._lock_proc = proc
        try:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), wait_s + 30)
            except asyncio.TimeoutError:
                line = ""
            yield str(line).strip() == "locked"
        finally:
            await self.release_update_lock()

    async def release_update_lock(self) -> None:
        """Let go of update.lock now (edge-update.sh takes it over for the switch); idempotent."""
        proc, self._lock_proc = self._lock_proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.write_eof()
            await asyncio.wait_for(proc.wait_closed(), 10)
        proc.close()

    async def switch(self, version: str) -> None:
        """Point ``current`` at a release directory in one rename, so a reader never sees it missing."""
        name = q(release_dir_name(self.robot, version))
        await self.conn.check(
            f"cd {self.dir} && test -d releases/{name} && ln -sfn releases/{name} .current.tmp "
            f"&& mv -T .current.tmp current",
            f"switching to {version}",
            timeout=30,
        )

    # --- the switch, owned by the robot (edge-update.sh) -----------------------------------------------
    async def upload_update_script(self) -> None:
        await self.conn.write_file(
            f"{self.robot.compose_dir}/{UPDATE_SCRIPT}", (compose_bundle_dir() / UPDATE_SCRIPT).read_bytes()
        )

    async def wait_settled(self, txn: str, until: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        """Poll state.json until edge-update.sh's transaction ``txn`` reaches one of ``until``."""
        deadline = time.monotonic() + timeout_s
        started_by = time.monotonic() + 60 + self.robot.lock_wait_s  # it must show up by then
        while True:
            state = await self.read_state()
            if state.get("txn") == txn and state.get("last_result") in until:
                return state
            now = time.monotonic()
            if state.get("txn") != txn and now > started_by:
                log_tail = await self.conn.run(f"tail -n 5 {self.dir}/update.log 2>/dev/null", timeout=30)
                raise FleetError(
                    f"Robot {self.robot.name}: {UPDATE_SCRIPT} did not start ({log_tail.tail(200) or 'no log'})"
                )
            if now > deadline:
                raise FleetError(
                    f"Robot {self.robot.name}: the update did not finish within {timeout_s:.0f} s "
                    f"(state {state.get('last_result')!r}, step {state.get('step')!r})"
                )
            await asyncio.sleep(POLL_S)

    async def transaction(
        self,
        version: str,
        restore_to: str | None,
        state: dict[str, Any],
        gate: DeployRequest,
        timings: dict[str, float],
        mark_bad: bool = True,
    ) -> tuple[str, str, dict[str, Any]]:
        """Switch to ``version`` through edge-update.sh, started detached on the robot (``setsid nohup``):
        it switches, runs ``up --wait``, and waits for this side's health gate to confirm; a failed ``up``
        or gate, or no confirmation within ``gate.confirm_timeout_s``, restores ``restore_to`` there, even
        with this connection gone. Returns (result, reason, final state); the update lock must be held and
        is handed over to the script."""
        for v in (version, restore_to, state.get("current"), state.get("previous")):
            if v:
                release_dir_name(self.robot, v)
        txn = secrets.token_hex(6)
        wait_s = int(max(gate.health_timeout_s, 1))
        restore_s = int(max(gate.health_timeout_s, RESTORE_TIMEOUT_S))
        env = {
            "EDGE_TXN": txn,
            "EDGE_VERSION": version,
            "EDGE_RESTORE": restore_to or "-",
            "EDGE_WAS": state.get("current") or "-",
            "EDGE_WAS_PREVIOUS": state.get("previous") or "-",
            "EDGE_WAIT_S": str(wait_s),
            "EDGE_RESTORE_WAIT_S": str(restore_s),
            "EDGE_CONFIRM_S": str(int(max(gate.confirm_timeout_s, 1))),
            "EDGE_LOCK_WAIT_S": str(int(self.robot.lock_wait_s) + 1),
            "EDGE_MARK_BAD": "1" if mark_bad else "0",
        }
        await self.upload_update_script()
        assign = " ".join(f"{k}={q(v)}" for k, v in env.items())
        t = time.monotonic()
        await self.conn.check(
            f"cd {self.dir} && rm -f txn-*.confirm txn-*.revert txn-*.reason && "
            f"{{ {assign} setsid nohup sh ./{UPDATE_SCRIPT} apply >update.log 2>&1 </dev/null & }}",
            "starting the update on the robot",
            timeout=30,
        )
        await self.release_update_lock()  # edge-update.sh holds it from here on
        up = await self.wait_settled(txn, ("awaiting_confirm", *SETTLED), wait_s + restore_s + 120)
        timings["switch"] = 0.0
        timings["up"] = round(time.monotonic() - t, 3)
        if up["last_result"] != "awaiting_confirm":  # up failed: the robot has restored on its own
            reason = (await self.conn.run(f"cat {self.dir}/txn-{txn}.reason 2>/dev/null", timeout=30)).stdout
            reason = reason.strip() or str(up.get("reason") or up["last_result"])
            timings["rollback"] = 0.0
            return str(up["last_result"]), reason, up
        t = time.monotonic()
        try:
            await self.health_gate_after_up(gate)
        except GateFailed as exc:
            timings["health"] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            await self.conn.write_file(f"{self.robot.compose_dir}/txn-{txn}.revert", str(exc)[:600].encode())
            done = await self.wait_settled(txn, SETTLED, restore_s + 120)
            timings["rollback"] = round(time.monotonic() - t, 3)
            if mark_bad:
                await self.mark_bad(version)
            return str(done["last_result"]), str(exc), done
        timings["health"] = round(time.monotonic() - t, 3)
        await self.conn.check(f": > {self.dir}/txn-{txn}.confirm", "confirming the update", timeout=30)
        done = await self.wait_settled(txn, SETTLED, restore_s + 120)
        reason = "" if done["last_result"] == "updated" else str(done.get("reason") or "")
        return str(done["last_result"]), reason, done

    async def settle_pending(self, req: DeployRequest | None = None) -> dict[str, Any]:
        """Before a new update: an edge-update.sh still running is left to finish (one that waits for a
        confirmation of ``req``'s own version and image is gated and confirmed now, as a re-run of that
        rollout); a switch no live script owns any more (a reboot, a killed script) is undone with
        ``edge-update.sh recover``. Returns the robot's state afterwards."""
        state = await self.read_state()
        if state.get("last_result") not in PENDING:
            return state
        txn = str(state.get("txn") or "")
        pid = state.get("pid")
        alive = (
            isinstance(pid, int)
            and (
                await self.conn.run(f"grep -q {UPDATE_SCRIPT} /proc/{pid}/cmdline 2>/dev/null", timeout=30)
            ).ok
        )
        restore_s = RESTORE_TIMEOUT_S + 120
        if not alive or not txn.isalnum():
            await self.upload_update_script()
            await self.conn.run(
                f"cd {self.dir} && sh ./{UPDATE_SCRIPT} recover >>update.log 2>&1", timeout=restore_s
            )
            return await self.read_state()
        timeout = (req.health_timeout_s + req.confirm_timeout_s if req else 900.0) + restore_s
        state = await self.wait_settled(txn, ("awaiting_confirm", *SETTLED), timeout)
        if state["last_result"] != "awaiting_confirm":
            return state
        revert = "superseded by a rollback before it was confirmed"
        if req is not None and state.get("current") == req.version and state.get("image") == req.image:
            try:  # the re-run of the very rollout that lost its connection: gate it now
                await self.health_gate_after_up(req)
                await self.conn.check(
                    f": > {self.dir}/txn-{txn}.confirm", "confirming the update", timeout=30
                )
                revert = ""
            except GateFailed as exc:
                revert = str(exc)
        elif req is not None:
            revert = f"superseded by a rollout of {req.version} before it was confirmed"
        if revert:
            await self.conn.write_file(f"{self.robot.compose_dir}/txn-{txn}.revert", revert[:600].encode())
        return await self.wait_settled(txn, SETTLED, timeout)

    # --- what really runs ------------------------------------------------------------------------------
    async def running_image(self) -> tuple[str, set[str]] | None:
        """The running service's image as its container names it (a digest or a tag) and every digest that
        identifies it (the image ID and its repository digests); None when no container runs."""
        r = await self.conn.run(
            f"cid=$(docker ps -q --filter label=com.docker.compose.project={PROJECT} "
            f'--filter label=com.docker.compose.service={SERVICE} | head -n1); [ -n "$cid" ] || exit 0; '
            "id=$(docker inspect -f '{{.Image}}' \"$cid\") && docker inspect -f '{{.Config.Image}}' \"$cid\" && "
            'echo "$id" && docker image inspect -f \'{{range .RepoDigests}}{{.}} {{end}}\' "$id"',
            timeout=60,
        )
        lines = r.stdout.split("\n") if r.ok else []
        if len(lines) < 2 or not lines[0].strip():
            return None
        digests = {lines[1].strip()} | {d.split("@", 1)[1] for d in " ".join(lines[2:]).split() if "@" in d}
        return lines[0].strip(), {d for d in digests if d.startswith("sha256:")}

    async def drift(self, state: dict[str, Any], known: dict[str, tuple[str, str]]) -> dict[str, Any] | None:
        """What runs when it is not the release state.json records (someone pinned another image in
        ``current/.env`` or switched ``current`` by hand and ran ``docker compose up -d``): ``running`` (the
        release it resolves to among ``known`` and the releases kept here, else None), ``image`` and
        ``note``; None when the recorded release runs (or nothing runs)."""
        running = await self.running_image()
        if running is None or not state.get("current"):
            return None
        image, digests = running
        recorded = str(state.get("image") or await self.release_image(str(state["current"])) or "")
        if recorded.partition("@")[2] in digests:
            return None
        kept = {}
        r = await self.conn.run(
            f'cd {self.dir}/releases 2>/dev/null && for d in *; do [ -f "$d/.env" ] && '
            'printf \'%s %s\\n\' "$d" "$(sed -n \'s/^EDGE_IMAGE=//p\' "$d/.env" | head -n1)"; done; true',
            timeout=30,
        )
        for line in r.stdout.splitlines():
            name, _, ref = line.partition(" ")
            if "@" in ref:
                kept[ref.partition("@")[2]] = (name, ref)
        found = next((known.get(d) or kept.get(d) for d in digests if known.get(d) or kept.get(d)), None)
        return {
            "running": found[0] if found else None,
            "running_ref": found[1] if found else image,
            "image": image,
            "note": "pinned by hand",
        }

    async def prebuild_engine(self, version: str, timeout_s: float) -> dict[str, Any]:
        """Build ``version``'s engine into the robot's engine cache with a one-off container of that release's
        service (``docker compose run``: the same image, volume, GPU runtime and environment as the service,
        so the cache key is the one the service will look up), while the running release keeps serving.
        The engine is pinned under the version (EDGE_ENGINE_PIN; an image older than pins ignores it), so
        eviction keeps it while the release is kept. Returns ``engine build``'s JSON (``hit``, ...)."""
        r = await self.conn.run(
            f"cd {self._release(version)} && docker compose -p {PROJECT} run --rm --no-deps -T "
            f"-e EDGE_ENGINE_PIN={q(version)} --entrypoint edge-runtime {SERVICE} engine build --json",
            timeout=timeout_s + 60,
        )
        if not r.ok:
            # edge-runtime ends a failed build with "error: <sentence>" and EdgeError's exit code; anything
            # else (compose or the engine refusing the container, a crash) says nothing certain about the
            # release, so it does not mark it bad.
            said = next((ln for ln in reversed(r.stderr.splitlines()) if ln.startswith("error: ")), "")
            if r.rc == EdgeError.exit_code and said:
                raise EngineBuildFailed(
                    f"building the engine of {version} on the robot failed: {said.removeprefix('error: ')}"
                )
            raise FleetError(
                f"running the engine build of {version} on the robot failed (exit {r.rc}): {r.tail(200)}"
            )
        try:
            return dict(json.loads(r.stdout[r.stdout.index("{") :]))
        except ValueError:
            return {}

    async def container_health(self) -> str:
        r = await self.conn.run(
            f"docker ps -aq --filter label=com.docker.compose.project={PROJECT} "
            f"--filter label=com.docker.compose.service={SERVICE} | head -n1 | "
            "xargs -r docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}"
            "{{else}}none{{end}} {{.Config.Image}}'",
            timeout=60,
        )
        return r.stdout.strip() if r.ok else ""

    @contextlib.asynccontextmanager
    async def service_client(self, timeout_s: float) -> AsyncIterator[Any]:
        """An httpx client on the robot's service, through an SSH port forward (it listens on the robot's
        loopback)."""
        import httpx

        async with (
            self.conn.forward(self.robot.service_port) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s) as http,
        ):
            yield http

    async def service_check(
        self, smoke: bool = True, timeout_s: float = 120, backend: tuple[str | None, str] | None = None
    ) -> dict[str, Any]:
        """Through an SSH port forward: /readyz must say the engine is ready (and, with ``backend``, served by
        the expected backend: see ``backend_check``), and with ``smoke`` one inference on an input built from
        the model's own metadata must return every declared output with its declared shape and finite values
        (whatever the model: nothing here assumes the sample policy)."""
        async with self.service_client(timeout_s) as http:
            ready = await ready_check(http)
            if backend is not None:
                backend_check(ready, *backend)
            result: dict[str, Any] = {"readyz": ready}
            if smoke:
                outputs, seconds = await smoke_check(http, served_model(ready))
                result["smoke_s"] = round(seconds, 3)
                result["outputs"] = {name: o.get("shape") for name, o in outputs.items()}
            return result

    async def infer(self, payload: dict[str, Any] | None = None, timeout_s: float = 120) -> dict[str, Any]:
        """One inference on the robot's service, through an SSH port forward (it listens on the robot's
        loopback): ``payload`` as a ``POST /v1/infer`` body, or by default the smoke input made from the
        served model's metadata. Returns the outputs by name and the round-trip time."""
        async with self.service_client(timeout_s) as http:
            if payload is None:
                outputs, seconds = await smoke_check(http, served_model(await ready_check(http)))
                return {"outputs": outputs, "service_ms": None, "round_trip_ms": round(seconds * 1000, 2)}
            t0 = time.monotonic()
            resp = await http.post("/v1/infer", json=payload)
            round_trip_ms = (time.monotonic() - t0) * 1000
        if resp.status_code != 200:
            raise GateFailed(f"inference answered {resp.status_code}: {resp.text[:150]}")
        body = resp.json()
        return {
            "outputs": body.get("outputs", {}),
            "service_ms": body.get("latency_ms"),
            "round_trip_ms": round(round_trip_ms, 2),
        }

    async def image_present(self, image: str) -> bool:
        r = await self.conn.run(f"docker image inspect {q(image)} >/dev/null 2>&1", timeout=60)
        return r.ok

    async def pull(self, image: str) -> None:
        """``docker pull`` by digest on the robot; a failure that may pass (registry 5xx, a reset or
        timed-out connection) is tried PULL_ATTEMPTS times with backoff, logged and counted in
        ``retries["pull"]``; a refusal (credentials, unknown manifest) is final at once."""
        try:
            async for attempt in backoff(
                "pull",
                PULL_ATTEMPTS,
                _PullHiccup,
                self.retries,
                first_wait_s=RETRY_WAIT_S,
                max_wait_s=60,
                prefix=f"Robot {self.robot.name}: ",
            ):
                with attempt:
                    await self._pull_once(image)
        except _PullHiccup as exc:
            raise FleetError(f"{exc} (after {PULL_ATTEMPTS} attempts)") from None

    async def _pull_once(self, image: str) -> None:
        r = await self.conn.run(
            f"docker pull -q --platform {q(self.robot.platform)} {q(image)}", timeout=1800
        )
        if not r.ok:
            tail = r.tail(200)
            if any(w in tail.lower() for w in ("unauthorized", "denied", "authentication required")):
                registry = image.split("/")[0]
                raise FleetError(
                    f"pulling {image} was refused by {registry}: the robot's Docker engine is not logged in "
                    f"there (once per robot: `docker login {registry}` as {self.robot.user}) ({tail})"
                )
            if any(w in tail.lower() for w in PULL_IS_FINAL):
                raise FleetError(f"pulling {image} failed: {tail}")
            raise _PullHiccup(f"pulling {image} failed: {tail}")

    async def release_required_backend(self, version: str) -> str | None:
        """The ``required_backend`` recorded in a kept release's release.json (None when unrecorded)."""
        r = await self.conn.run(f"cat {self.dir}/releases/{q(version)}/release.json 2>/dev/null", timeout=30)
        try:
            value = json.loads(r.stdout).get("required_backend") if r.ok else None
        except (ValueError, AttributeError):
            return None
        return value if value in ("tensorrt", "any") else None

    async def release_image(self, version: str) -> str | None:
        r = await self.conn.run(
            f"sed -n 's/^EDGE_IMAGE=//p' {self.dir}/releases/{q(version)}/.env 2>/dev/null", timeout=30
        )
        return r.stdout.strip() or None

    async def prune(self, keep: set[str]) -> list[str]:
        """Remove release directories and images other than ``keep`` (current and previous)."""
        r = await self.conn.run(f"ls -1 {self.dir}/releases 2>/dev/null || true", timeout=30)
        removed = []
        keep_images = {await self.release_image(v) for v in keep}
        for name in r.stdout.split():
            if name in keep or name.startswith("."):
                continue
            image = await self.release_image(name)
            if image and image not in keep_images:
                await self.conn.run(f"docker image rm {q(image)} >/dev/null 2>&1 || true", timeout=120)
            await self.conn.run(f"rm -rf {self.dir}/releases/{q(name)}", timeout=60)
            removed.append(name)
        return removed

    async def prune_engines(self, version: str, keep: set[str]) -> None:
        """Drop the engine-cache pins of releases no longer kept (``engine prune --keep``), from a one-off
        container of ``version``'s service (the volume is not reachable from the deploy user's shell). A
        failure only logs: the releases are in place, and the cache's own eviction still bounds it."""
        keeps = " ".join(f"--keep {q(v)}" for v in sorted(keep))
        try:
            r = await self.conn.run(
                f"cd {self._release(version)} && docker compose -p {PROJECT} run --rm --no-deps -T "
                f"--entrypoint edge-runtime {SERVICE} engine prune {keeps} --json",
                timeout=300,
            )
        except FleetError as exc:  # the SSH connection dropped or timed out
            log.warning("Robot %s: dropping engine pins failed: %s", self.robot.name, exc)
            return
        if not r.ok:
            log.warning(
                "Robot %s: dropping engine pins failed (exit %s): %s", self.robot.name, r.rc, r.tail(200)
            )

    async def install_unit(self) -> str:
        """Install and enable the systemd unit so the compose project starts at boot (needs passwordless sudo
        for install and systemctl). Returns a note when that cannot be done; the release itself stays up."""
        if not (await self.conn.run("test -d /run/systemd/system", timeout=30)).ok:
            return "auto-start not installed: the robot does not run systemd"
        unit = (compose_bundle_dir() / SYSTEMD_UNIT).read_text()
        home = (await self.conn.check("pwd", "reading the home directory", timeout=30)).strip()
        d = self.robot.compose_dir
        workdir = d if d.startswith("/") else f"{home}/{d}"
        if not workdir.startswith("/") or compose_dir_problem(workdir) is not None:  # the home is the robot's
            return f"auto-start not installed: {workdir!r} cannot be a unit's WorkingDirectory"
        unit = unit.replace("@EDGE_DIR@", workdir).replace("@EDGE_USER@", self.robot.user)
        # The unit goes up by SFTP next to the releases, then root copies that file: nothing of it passes
        # through a shell (a heredoc would end at a line "EOF" and run what follows as root).
        await self.conn.write_file(f"{d}/{SYSTEMD_UNIT}", unit.encode())
        r = await self.conn.run(
            f"sudo -n install -m 0644 -- {q(f'{workdir}/{SYSTEMD_UNIT}')} /etc/systemd/system/{SYSTEMD_UNIT} "
            f"&& sudo -n systemctl daemon-reload && sudo -n systemctl enable {SYSTEMD_UNIT}",
            timeout=60,
        )
        return "" if r.ok else f"auto-start not installed: {r.tail(150)}"

    # --- the operations --------------------------------------------------------------------------------
    async def deploy(self, req: DeployRequest, timings: dict[str, float]) -> RobotResult:
        """Update this robot to ``req.version``; never leaves it without a running release it had. The
        result carries the retries its steps took (``retries``, and their sum in ``timings``)."""
        res = await self._deploy(req, timings)
        res.retries = {k: v for k, v in self.retries.items() if v}
        timings["retries"] = sum(res.retries.values())
        return res

    async def _deploy(self, req: DeployRequest, timings: dict[str, float]) -> RobotResult:
        robot = self.robot
        res = RobotResult(robot.name, req.version, FAILED, timings=timings)
        release_dir_name(robot, req.version)
        t = time.monotonic()
        space = await self.free_space()
        state = await self.settle_pending(req)
        state = await self.adopt_drift(state, req.known_images, "rollout")
        current, previous = state.get("current"), state.get("previous")
        res.previous = current
        timings["preflight"] = round(time.monotonic() - t, 3)
        what, where, free = min(space, key=lambda m: m[2])
        if free < robot.min_free_mb:
            res.outcome, res.stage = REFUSED, "disk"
            res.reason = f"only {free} MB free in {where} ({what}), below the {robot.min_free_mb} MB minimum"
            await self.append_history(
                {"action": "deploy", "version": req.version, "result": res.outcome, "reason": res.reason}
            )
            return res
        if not req.force and req.version in await self.bad_versions():
            res.outcome, res.stage = SKIPPED, "bad-version"
            res.reason = f"version {req.version} failed here before (bad-versions); use --force to retry"
            return res
        t = time.monotonic()
        async with self.update_lock(robot.lock_wait_s) as locked:
            timings["lock"] = round(time.monotonic() - t, 3)
            if not locked:
                res.outcome, res.stage = SKIPPED, "lock"
                res.reason = f"the robot's application held update.lock for more than {robot.lock_wait_s:g} s"
                await self.append_history(
                    {"action": "deploy", "version": req.version, "result": res.outcome, "reason": res.reason}
                )
                return res
            unchanged = current == req.version and state.get("image") == req.image
            return await self._deploy_locked(req, res, current, previous, unchanged, timings)

    async def _deploy_locked(
        self,
        req: DeployRequest,
        res: RobotResult,
        current: str | None,
        previous: str | None,
        unchanged: bool,
        timings: dict[str, float],
    ) -> RobotResult:
        """``unchanged``: the robot already ran this version with this image (a re-released version with
        another digest is an update)."""
        # A rerun after an interrupted rollout finds current == version: keep the older previous.
        restore_to = previous if current == req.version else current
        t = time.monotonic()
        tmp = f"{self.robot.compose_dir}/releases/.{req.version}.{secrets.token_hex(4)}"
        try:
            res.uploaded_bytes = await self.conn.upload(bundle_files(self.robot, req), tmp)
            final = self._release(req.version)
            await self.conn.check(
                f"rm -rf {final}.old; if [ -d {final} ]; then mv {final} {final}.old; fi; "
                f"mv {q(tmp)} {final} && rm -rf {final}.old",
                "installing the release files",
                timeout=60,
            )
        except FleetError as exc:
            await self.conn.run(f"rm -rf {q(tmp)}", timeout=30)
            res.stage, res.reason = "upload", str(exc)
            return res
        timings["upload"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        try:
            await self.pull(req.image)
        except FleetError as exc:
            return await self._failed_before_switch(req, res, "pull", exc, current)
        timings["pull"] = round(time.monotonic() - t, 3)
        if req.prebuild:
            t = time.monotonic()
            try:
                built = await self.prebuild_engine(req.version, req.health_timeout_s)
            except EngineBuildFailed as exc:  # deterministic for this model on this device: marked bad
                await self.mark_bad(req.version)
                return await self._failed_before_switch(req, res, "engine", exc, current)
            except FleetError as exc:  # SSH dropped or timed out, Docker failed around the build: retry later
                return await self._failed_before_switch(req, res, "engine", exc, current)
            timings["engine"] = round(time.monotonic() - t, 3)
            res.engine = {k: built[k] for k in ("hit", "build_seconds", "key") if k in built}
        await self.append_history(
            {"action": req.action, "version": req.version, "result": "started", "from": current}
        )
        result, reason, settled = await self.transaction(
            req.version, restore_to, {"current": current, "previous": previous}, req, timings
        )
        if result != "updated":
            return self._not_updated(res, result, reason, settled, restore_to, timings)
        if req.auto_start:
            res.reason = await self.install_unit()
        await self.write_state(
            {
                "current": req.version,
                "previous": restore_to,
                "image": req.image,
                "last_result": UNCHANGED if unchanged else UPDATED,
            }
        )
        await self.append_history(
            {
                "action": req.action,
                "version": req.version,
                "result": "ok",
                "from": current,
                "timings": timings,
            }
        )
        if req.prune:
            await self.prune({v for v in (req.version, restore_to) if v})
            await self.prune_engines(req.version, {v for v in (req.version, restore_to) if v})
        res.outcome = UNCHANGED if unchanged else UPDATED
        res.stage, res.previous = "health", restore_to if current == req.version else current
        return res

    def _not_updated(
        self,
        res: RobotResult,
        result: str,
        reason: str,
        final: dict[str, Any],
        restore_to: str | None,
        timings: dict[str, float],
    ) -> RobotResult:
        """The result of a switch edge-update.sh undid (gate or ``up`` failed, no confirmation) or could
        not make (the lock); the robot wrote its own history line."""
        if isinstance(final.get("restore_s"), (int, float)):
            timings["rollback"] = float(final["restore_s"])
        if result == "skipped":
            res.outcome, res.stage = SKIPPED, "lock"
            res.reason = (
                f"the robot's application held update.lock for more than {self.robot.lock_wait_s:g} s"
            )
        elif result in ("rolled_back", "reverted") and restore_to:
            res.outcome, res.stage, res.reason = ROLLED_BACK, "health", f"{reason}; restored {restore_to}"
        else:
            res.outcome, res.stage = FAILED, "health"
            res.reason = str(final.get("reason") or reason or result)
        return res

    async def health_gate_after_up(self, req: DeployRequest) -> dict[str, Any]:
        health = await self.container_health()
        if " healthy " not in f" {health} ":
            raise GateFailed(f"the container is not healthy ({health or 'no container'})")
        try:
            return await self.service_check(
                req.smoke, backend=expected_backend(self.robot, req.required_backend)
            )
        except FleetError:
            raise
        except Exception as exc:  # connection refused, timeouts, SSH forward errors
            raise GateFailed(
                f"the service on port {self.robot.service_port} did not answer ({type(exc).__name__}: {exc})"
            ) from None

    async def _failed_before_switch(
        self, req: DeployRequest, res: RobotResult, stage: str, exc: FleetError, current: str | None
    ) -> RobotResult:
        """A step before the switch failed: the robot never left its release; say so and record it."""
        res.stage, res.reason = stage, f"{exc}; the robot stays on {current or 'no release'}"
        await self.append_history(
            {"action": "deploy", "version": req.version, "result": FAILED, "stage": stage, "reason": str(exc)}
        )
        return res

    async def adopt_drift(
        self, state: dict[str, Any], known: dict[str, tuple[str, str]], by: str
    ) -> dict[str, Any]:
        """Make state.json say what really runs before an update or rollback starts from it: a release
        pinned by hand becomes ``current`` (its files written here when it is no longer kept, so a failed
        update restores it), an unknown image stays in the hand-edited release it runs from; history records
        the change. Returns the state to start from."""
        found = await self.drift(state, known)
        if found is None:
            return state
        was, running = state.get("current"), found["running"]
        if running:
            release_dir_name(self.robot, running)
            if not (await self.conn.run(f"test -d {self._release(running)}", timeout=30)).ok:
                files = bundle_files(self.robot, DeployRequest(running, found["running_ref"]))
                tmp = f"{self.robot.compose_dir}/releases/.{running}.{secrets.token_hex(4)}"
                await self.conn.upload(files, tmp)
                await self.conn.check(f"mv {q(tmp)} {self._release(running)}", "keeping the running release")
            previous = state.get("previous") if state.get("previous") != running else None
            new = {"current": running, "previous": previous, "image": found["running_ref"]}
        else:
            new = {"current": was, "previous": state.get("previous"), "image": found["image"]}
        new["last_result"] = "pinned_by_hand"
        await self.write_state(new)
        await self.append_history(
            {
                "action": "manual-change",
                "version": running,
                "image": found["image"],
                "from": was,
                "result": "pinned by hand",
                "reason": f"runs {running or 'an unknown image'} ({found['image']}) where state.json said {was}",
                "detected_by": by,
            }
        )
        log.warning(
            "Robot %s: runs %s (%s), pinned by hand; state.json said %s.",
            self.robot.name,
            running or "an unknown image",
            found["image"],
            was,
        )
        return new

    async def rollback(
        self,
        to: str | None,
        health_timeout_s: float,
        smoke: bool = True,
        deploy: DeployRequest | None = None,
        not_kept_hint: str = "",
        known: dict[str, tuple[str, str]] | None = None,
    ) -> RobotResult:
        """Back to the previous (or a named) release kept on the robot; nothing is downloaded. A release
        no longer kept is deployed from ``deploy`` (its manifest: pulled, pre-built and gated as a rollout)
        when given, else refused with ``not_kept_hint`` (which command does it)."""
        t0 = time.monotonic()
        state = await self.settle_pending()
        state = await self.adopt_drift(state, known or (deploy.known_images if deploy else {}), "rollback")
        current = state.get("current")
        target = to or state.get("previous")
        res = RobotResult(self.robot.name, target or "?", FAILED, previous=current)
        if not target:
            res.outcome, res.reason = REFUSED, "no previous release is recorded on this robot"
            return res
        image = await self.release_image(target)
        if image is None or not await self.image_present(image):
            if deploy is not None and deploy.version == target:
                return await self.deploy(deploy, {})
            what = "is not kept on this robot" if image is None else f"has no image on this robot ({image})"
            res.outcome, res.reason = REFUSED, f"release {target} {what}{not_kept_hint}"
            return res
        required = await self.release_required_backend(target)
        gate = DeployRequest(
            target, image, smoke=smoke, required_backend=required, health_timeout_s=health_timeout_s
        )
        restore_to = current if current != target else None
        result, reason, final = await self.transaction(target, restore_to, state, gate, res.timings, False)
        if result != "updated":
            res.reason = reason or str(final.get("reason") or result)
            if result in ("rolled_back", "reverted") and restore_to:  # back on what it ran
                res.reason += f"; {restore_to} restored"
            elif result == "skipped":
                res.outcome, res.reason = SKIPPED, "the robot's application held update.lock"
            await self.append_history(
                {
                    "action": "rollback",
                    "version": target,
                    "from": current,
                    "result": FAILED,
                    "reason": res.reason,
                }
            )
            return res
        await self.write_state(
            {
                "current": target,
                "previous": current if current != target else None,
                "image": image,
                "last_result": "rolled_back_by_user",
            }
        )
        res.timings["rollback"] = round(time.monotonic() - t0, 3)
        await self.append_history(
            {"action": "rollback", "version": target, "from": current, "result": "ok", "timings": res.timings}
        )
        res.outcome = UPDATED
        return res

    async def status(self, known: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
        state = await self.read_state()
        health = await self.container_health()
        parts = health.split()
        info: dict[str, Any] = {
            "robot": self.robot.name,
            "version": state.get("current"),
            "previous": state.get("previous"),
            "image": parts[2] if len(parts) > 2 else state.get("image"),
            "container": parts[0] if parts else "absent",
            "health": parts[1] if len(parts) > 1 else "absent",
            "last_result": state.get("last_result"),
            "updated": state.get("updated"),
            "drift": None,
        }
        if state.get("last_result") in PENDING:
            info["last_result"] = f"{state['last_result']} (step {state.get('step')}, on the robot)"
        found = await self.drift(state, known or {})
        if found is not None:  # what runs is not the release state.json records
            info["drift"] = found
            info["version"] = found["running"] or "unknown image"
            info["recorded"] = state.get("current")
            info["last_result"] = "pinned by hand"
        info["bad_versions"] = sorted(await self.bad_versions())
        if info["container"] == "running":
            try:
                info["engine"] = (await self.service_check(smoke=False, timeout_s=10)).get("readyz")
            except Exception as exc:
                info["engine"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        return info

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        r = await self.conn.run(
            f"tail -n {int(limit)} {self.dir}/history.jsonl 2>/dev/null || true", timeout=30
        )
        out = []
        for line in r.stdout.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out
