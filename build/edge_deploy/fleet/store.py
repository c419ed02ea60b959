"""The release store on one robot and the commands that keep it, over SSH: state, history and bad
versions, free space, the update lock, pulling images, pre-building engines, pruning, the systemd unit,
and what really runs. Nothing here decides an update (``switch`` and ``deploy`` do).

Layout under the robot's compose directory (``~/edge`` unless the inventory says otherwise)::

    releases/<version>/{compose.yaml, compose.*.yaml, .env, release.json}
    current -> releases/<version>     switched atomically by edge-update.sh (ln -s tmp && mv -T)
    state.json                        current / previous version, last result
    history.jsonl                     one line per deploy, rollback and automatic rollback
    bad-versions                      versions that failed their health gate here (skipped unless forced)
    update.lock                       flock'ed by the robot's application while it must not be disturbed
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import asyncssh

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.compose import (
    ENGINE_VOLUME,
    PROJECT,
    SERVICE,
    SERVICE_FILTER,
    SYSTEMD_UNIT,
    compose_bundle_dir,
    now_iso,
    release_dir_name,
)
from edge_deploy.fleet.inventory import compose_dir_problem
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import HistoryEntry
from edge_deploy.fleet.ssh import RobotConnection, RobotUnreachable, backoff, q
from edge_runtime.errors import EdgeError

log = logging.getLogger(__name__)

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


class EngineBuildFailed(FleetError):
    """The release's engine build itself failed on the robot (edge-runtime ended with its one-sentence error
    and exit code): deterministic for this model on this device, so the version is marked bad there."""


class _PullHiccup(FleetError):
    """A pull that failed in a way worth another try (registry 5xx, reset or timed-out connection)."""


class RobotStore:
    """The release store on one robot and the commands that keep it; ``RobotReleases`` adds the operations."""

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

    # --- what really runs ------------------------------------------------------------------------------
    async def running_image(self) -> tuple[str, set[str]] | None:
        """The running service's image as its container names it (a digest or a tag) and every digest that
        identifies it (the image ID and its repository digests); None when no container runs."""
        r = await self.conn.run(
            f'cid=$(docker ps -q {SERVICE_FILTER} | head -n1); [ -n "$cid" ] || exit 0; '
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

    async def container_health(self, project: str | None = None) -> str:
        """Docker's state, health and image of the service container (of ``project``: a hand-over's new
        release while the old one still runs; by default whichever project runs the service)."""
        which = (
            f"--filter label=com.docker.compose.project={project} {SERVICE_FILTER}"
            if project
            else SERVICE_FILTER
        )
        r = await self.conn.run(
            f"docker ps -aq {which} | head -n1 | "
            "xargs -r docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}"
            "{{else}}none{{end}} {{.Config.Image}}'",
            timeout=60,
        )
        return r.stdout.strip() if r.ok else ""

    async def image_present(self, image: str) -> bool:
        r = await self.conn.run(f"docker image inspect {q(image)} >/dev/null 2>&1", timeout=60)
        return r.ok

    async def fetch_image(self, req: DeployRequest) -> int | None:
        """The pull step, by the request's transport: the robot pulls from the registry (bytes not known
        here, None), or from the host over SSH (``transport.copy_image``: the bytes it lacked)."""
        if req.transport != "ssh-copy":
            await self.pull(req.image)
            return None
        from edge_deploy.fleet.transport import ImageStore, copy_image, default_store

        if await self.image_present(req.image):
            return 0
        store = ImageStore(req.image_store or default_store())
        return await copy_image(self.conn, req.image, store, self.robot.platform)

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

    async def history(self, limit: int = 50) -> list[HistoryEntry]:
        """The last ``limit`` lines of history.jsonl, oldest first; a damaged line is left out."""
        r = await self.conn.run(
            f"tail -n {int(limit)} {self.dir}/history.jsonl 2>/dev/null || true", timeout=30
        )
        out: list[HistoryEntry] = []
        for line in r.stdout.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)  # type: ignore[arg-type]  # the robot's own JSON, keys as written
        return out
