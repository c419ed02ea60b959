"""One robot's update and rollback, as a state machine over its store (``store``) and the switch it makes
(``switch``): preflight (free space, a pending switch, a release pinned by hand) → bad version → update lock
→ upload → pull → engine pre-build → switch, up and gate (edge-update.sh) → state, history, prune. Every
step that can fail does so before ``current`` moves, or is undone on the robot by restoring the previous
release. Each step is timed and named by one ``Steps`` timer, so a result says where it stopped and how
long each step took.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.compose import bundle_files, release_dir_name
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import (
    FAILED,
    REFUSED,
    ROLLED_BACK,
    SKIPPED,
    UNCHANGED,
    UNREACHABLE,
    UPDATED,
    RobotResult,
    RobotStatus,
    Steps,
)
from edge_deploy.fleet.ssh import HostKeyRefused, RobotUnreachable, connected, q
from edge_deploy.fleet.status import robot_status
from edge_deploy.fleet.store import EngineBuildFailed
from edge_deploy.fleet.switch import RobotSwitch

log = logging.getLogger(__name__)
T = TypeVar("T")
Progress = Callable[[str, str, str], None]  # robot, step, detail


class RobotReleases(RobotSwitch):
    """The release store on one robot, with its operations: deploy, roll back, report status."""

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
        steps = Steps(timings)
        with steps("preflight"):
            space = await self.free_space()
            state = await self.settle_pending(req)
            state = await self.adopt_drift(state, req.known_images, "rollout")
        current, previous = state.get("current"), state.get("previous")
        res.previous = current
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
            res.reason = (
                f"version {req.version} failed here before (bad-versions); deploy it with force to retry"
            )
            return res
        async with contextlib.AsyncExitStack() as held:
            with steps("lock"):
                locked = await held.enter_async_context(self.update_lock(robot.lock_wait_s))
            if not locked:
                res.outcome, res.stage = SKIPPED, "lock"
                res.reason = f"the robot's application held update.lock for more than {robot.lock_wait_s:g} s"
                await self.append_history(
                    {"action": "deploy", "version": req.version, "result": res.outcome, "reason": res.reason}
                )
                return res
            unchanged = current == req.version and state.get("image") == req.image
            return await self._deploy_locked(req, res, current, previous, unchanged, timings)
        raise AssertionError("an exit stack does not swallow exceptions")  # for mypy: every path returned

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
        steps = Steps(timings)
        tmp = f"{self.robot.compose_dir}/releases/.{req.version}.{secrets.token_hex(4)}"
        try:
            with steps("upload"):
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
            res.stage, res.reason = steps.current, str(exc)
            return res
        try:
            with steps("pull"):
                res.image_bytes = await self.fetch_image(req)
            if req.prebuild:
                with steps("engine"):
                    built = await self.prebuild_engine(req.version, req.health_timeout_s)
                res.engine = {k: built[k] for k in ("hit", "build_seconds", "key") if k in built}
        except EngineBuildFailed as exc:  # deterministic for this model on this device: marked bad
            await self.mark_bad(req.version)
            return await self._failed_before_switch(req, res, steps.current, exc, current)
        except FleetError as exc:  # a pull refused or given up, SSH or Docker failing around the build
            return await self._failed_before_switch(req, res, steps.current, exc, current)
        await self.append_history(
            {"action": req.action, "version": req.version, "result": "started", "from": current}
        )
        result, reason, settled = await self.transaction(
            req.version, restore_to, {"current": current, "previous": previous}, req, timings
        )
        res.update = dict(self.update)
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
        update_strategy: str | None = None,
    ) -> RobotResult:
        """Back to the previous (or a named) release kept on the robot; nothing is downloaded. A release
        no longer kept is deployed from ``deploy`` (its manifest: pulled, pre-built and gated as a rollout)
        when given, else refused with ``not_kept_hint`` (which command does it). ``update_strategy``: the
        operator's, else the robot's (a hand-over back costs no downtime either)."""
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
            target,
            image,
            smoke=smoke,
            required_backend=required,
            health_timeout_s=health_timeout_s,
            update_strategy=update_strategy,
        )
        restore_to = current if current != target else None
        result, reason, final = await self.transaction(target, restore_to, state, gate, res.timings, False)
        res.update = dict(self.update)
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

    async def status(self, known: dict[str, tuple[str, str]] | None = None) -> RobotStatus:
        """What this robot records, what really runs, its health and engine (see ``status.robot_status``)."""
        return await robot_status(self, known or {})


async def on_robot(
    robot: Robot,
    version: str,
    fn: Callable[[RobotReleases], Awaitable[T]],
    timings: dict[str, float] | None = None,
) -> T | RobotResult:
    """``fn`` on one robot's releases; a refused host key, an unreachable robot or a failed command
    becomes that robot's result, so the other robots of a wave, a status or a rollback go on."""
    timings = {} if timings is None else timings
    retries: dict[str, int] = {}  # step → retries, filled by connect() and the robot's steps
    out: T | RobotResult
    try:
        async with connected(robot, retries=retries) as conn:
            out = await fn(RobotReleases(conn, retries))
    except HostKeyRefused as exc:
        out = RobotResult(robot.name, version, REFUSED, str(exc), stage="connect", timings=timings)
    except RobotUnreachable as exc:
        out = RobotResult(robot.name, version, UNREACHABLE, str(exc), stage="connect", timings=timings)
    except FleetError as exc:
        out = RobotResult(robot.name, version, FAILED, str(exc), stage="ssh", timings=timings)
    if isinstance(out, RobotResult):
        out.retries = {k: v for k, v in retries.items() if v}
        out.timings["retries"] = sum(out.retries.values())
    return out


async def deploy_one(robot: Robot, req: DeployRequest, progress: Progress | None = None) -> RobotResult:
    """Connect and update one robot; connection problems become a result, not an exception."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    say = progress or (lambda *_: None)
    say(robot.name, "connect", f"{robot.host}:{robot.port}")

    async def update(releases: RobotReleases) -> RobotResult:
        timings["connect"] = round(time.monotonic() - t0, 3)
        say(robot.name, "deploy", req.version)
        return await releases.deploy(req, timings)

    res = await on_robot(robot, req.version, update, timings)
    timings["total"] = round(time.monotonic() - t0, 3)
    say(robot.name, res.outcome, res.reason)
    return res
