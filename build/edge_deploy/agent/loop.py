"""The agent's loop: read the robot's channel (signature and images verified), decide, apply through the
same ``RobotReleases`` state machine SSH mode uses, report to the site's pushgateway, wait, repeat.

- A channel that cannot be read (the link is down, the registry answers 5xx) is an offline check, never a
  failed deploy: the robot keeps its last good release, the next check comes sooner than the backoff's
  ceiling and catches up once the link returns. Waits between checks: the interval plus a random jitter;
  after failed checks, exponential backoff (tenacity's waits) up to ``max_backoff_s``.
- A refused channel (unsigned, another key, digests that do not match) deploys nothing.
- The release is taken only when the robot's stable bucket is below the channel's percent.
- A version in bad-versions is not tried again; a release the robot already runs is left alone; a channel
  reverted to a release the robot kept rolls back to it (nothing downloaded), else deploys it.
- A pushgateway that is down costs a log line, never a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random

from edge_deploy.agent.config import AgentConfig
from edge_deploy.agent.local import LocalConnection
from edge_deploy.fleet import FleetError
from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.options import DeployRequest, RolloutOptions, deploy_request
from edge_deploy.fleet.outcome import FAILED, REFUSED, SKIPPED, UNCHANGED
from edge_deploy.fleet.switch import PENDING
from edge_deploy.release.channel import (
    Channel,
    ChannelError,
    ChannelMissing,
    ChannelRefused,
    bucket,
    read_channel,
)
from edge_deploy.release.manifest import ReleaseError, ReleaseManifest
from edge_deploy.release.registry import Registry

log = logging.getLogger(__name__)

# What one check did (``CheckResult.action``).
OFFLINE = "offline"  # the channel could not be read: nothing changed on the robot
NO_CHANNEL = "no_channel"  # the channel is not published yet
NOT_IN_ROLLOUT = "not_in_rollout"  # the robot's bucket is not below the channel's percent
CURRENT = "current"  # the robot already runs the channel's release
BAD_VERSION = "bad_version"  # the channel's release failed here before
DEPLOY = "deploy"
ROLLBACK = "rollback"  # the channel went back to a release the robot keeps
AGENT_STATE = "agent.json"  # in the compose directory: the agent's last outcome, across restarts


@dataclass
class CheckResult:
    """One check of the channel and what came of it (the agent prints it as a JSON line)."""

    robot: str
    channel: str
    bucket: int
    action: str
    outcome: str = ""  # the state machine's outcome when it ran (fleet/outcome.py's words)
    reason: str = ""
    channel_version: str | None = None
    percent: int | None = None
    version: str | None = None  # what the robot runs after the check
    healthy: bool = False
    engine_state: str = ""
    reported: bool = False  # the pushgateway took the report
    at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.action != OFFLINE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def site_ref(ref: str, site_cache: str | None) -> str:
    """``REGISTRY/repo@sha256:X`` as pulled at the robot's site: through ``site_cache`` (same repository
    path, same digest: integrity still comes from the digest and the signature) when there is one."""
    if site_cache is None:
        return ref
    repository, sep, digest = ref.partition("@")
    if not sep or not digest.startswith("sha256:"):
        raise FleetError(f"Image reference {ref!r} is not pinned by digest (repository@sha256:…).")
    _, _, path = repository.partition("/")
    return f"{site_cache}/{path}@{digest}"


def _digest(ref: object) -> str:
    return str(ref or "").rpartition("@")[2]


class Agent:
    """One robot's agent. ``check_once`` is one poll; ``run`` polls until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.robot = config.robot
        self.bucket = bucket(self.robot.name)
        self.registries: dict[str, Registry] = {}
        self.failures = 0  # consecutive offline checks
        self.verified: Channel | None = None  # the channel as last verified: an unchanged tag costs one GET
        jitter = wait_random(0, config.poll_jitter_s)
        self._wait_ok = wait_random(config.poll_interval_s, config.poll_interval_s + config.poll_jitter_s)
        self._wait_failed = (
            wait_exponential(multiplier=config.poll_interval_s, max=config.max_backoff_s) + jitter
        )

    def connection(self) -> LocalConnection:
        return LocalConnection(
            self.robot, docker_host=self.config.docker_host, service_host=self.config.service_host
        )

    def next_wait(self, result: CheckResult | None) -> float:
        """Seconds until the next check: the interval plus jitter, or exponential backoff (plus jitter, so a
        site's robots coming back online do not all ask at once) after consecutive offline checks."""
        state = RetryCallState(Retrying(), None, (), {})  # tenacity's waits read attempt_number only
        if result is not None and result.online:
            return float(self._wait_ok(state))
        state.attempt_number = max(1, self.failures)
        return float(self._wait_failed(state))

    # --- one check ------------------------------------------------------------------------------------
    async def check_once(self) -> CheckResult:
        cfg = self.config
        res = CheckResult(self.robot.name, cfg.channel, self.bucket, OFFLINE)
        releases = RobotReleases(self.connection())
        try:
            channel = await asyncio.to_thread(
                read_channel,
                cfg.repository,
                cfg.channel,
                cfg.public_key,
                platform=self.robot.platform,
                registries=self.registries,
                verified=self.verified,
            )
        except ChannelMissing as exc:
            res.action, res.reason = NO_CHANNEL, str(exc)
        except ChannelRefused as exc:
            res.action, res.outcome, res.reason = REFUSED, REFUSED, str(exc)
            log.error("Robot %s: %s Nothing of it is deployed.", self.robot.name, exc)
        except ChannelError as exc:  # the public key cannot be read: a configuration problem, every time
            res.action, res.outcome, res.reason = REFUSED, REFUSED, str(exc)
        except ReleaseError as exc:  # RegistryError: unreachable, 5xx after retries, refused requests
            res.reason = f"{exc} The robot keeps its release and checks again later."
            log.warning("Robot %s: channel %s not read: %s", self.robot.name, cfg.channel, exc)
        else:
            self.verified = channel
            res.channel_version, res.percent = channel.version, channel.percent
            try:
                await self._apply(releases, channel, res)
            except FleetError as exc:  # the robot's own shell, files or Docker failed around the machine
                res.outcome, res.reason = FAILED, str(exc)
                log.error("%s", exc)
        self.failures = 0 if res.online else self.failures + 1
        await self._observe(releases, res)
        self._remember(res)
        await self._report(res)
        return res

    async def _apply(self, releases: RobotReleases, channel: Channel, res: CheckResult) -> None:
        """Decide and act on a verified channel."""
        target = channel.manifest
        state = await releases.read_state()
        if (
            state.get("last_result") in PENDING
        ):  # a switch an earlier run left (the agent restarted, a reboot)
            state = await releases.settle_pending(self.request(target))
            res.reason = f"settled a pending switch ({state.get('last_result')})"
        current, image = state.get("current"), state.get("image")
        if current == target.version and _digest(image) == target.runtime.digest:
            res.action = CURRENT
            return
        if channel.percent <= self.bucket:
            res.action = NOT_IN_ROLLOUT
            res.reason = f"bucket {self.bucket} is not below the channel's {channel.percent} %"
            return
        if target.version in await releases.bad_versions():
            res.action, res.outcome = BAD_VERSION, SKIPPED
            res.reason = f"version {target.version} failed here before (bad-versions); it is not tried again"
            return
        req = self.request(target)
        kept = await releases.release_image(target.version)
        if kept is not None and _digest(kept) == target.runtime.digest and await releases.image_present(kept):
            res.action = ROLLBACK
            t0 = time.monotonic()
            out = await releases.rollback(
                target.version,
                self.config.health_timeout_s,
                self.config.smoke,
                deploy=req,
                known=req.known_images,
            )
            out.timings["total"] = round(time.monotonic() - t0, 3)
        else:
            res.action = DEPLOY
            t0 = time.monotonic()
            out = await releases.deploy(req, {})
            out.timings["total"] = round(time.monotonic() - t0, 3)
        res.outcome, res.reason, res.timings = out.outcome, out.reason, out.timings
        if out.engine:
            res.engine_state = "hit" if out.engine.get("hit") else "built"
        log.info(
            "Robot %s: %s %s → %s%s",
            self.robot.name,
            res.action,
            target.version,
            out.outcome,
            f" ({out.reason})" if out.reason else "",
        )

    def request(self, manifest: ReleaseManifest) -> DeployRequest:
        """What the state machine receives for the channel's release: the operator's rollout defaults, the
        image pulled through the site cache when there is one."""
        cfg = self.config
        ref = site_ref(manifest.runtime.ref, cfg.site_cache)
        options = RolloutOptions(
            version=manifest.version,
            health_timeout_s=cfg.health_timeout_s,
            confirm_timeout_s=cfg.confirm_timeout_s,
            smoke=cfg.smoke,
            prebuild=cfg.prebuild,
            prune=cfg.prune,
        )
        req = deploy_request(
            manifest, options, signed=True, known={manifest.runtime.digest: (manifest.version, ref)}
        )
        return replace(req, image=ref, release={**req.release, "channel": cfg.channel})

    # --- what the robot is now, and the report ----------------------------------------------------------
    async def _observe(self, releases: RobotReleases, res: CheckResult) -> None:
        """The robot's release and health after the check, read from its own state and Docker."""
        from edge_deploy.fleet.gate import service_check

        try:
            state = await releases.read_state()
            res.version = state.get("current")
            health = await releases.container_health()
            res.healthy = health.split()[:2] == ["running", "healthy"]
            if not res.engine_state:
                if not health:
                    res.engine_state = "absent"
                else:
                    try:
                        ready = (await service_check(releases.conn, smoke=False, timeout_s=5)).get("readyz")
                        res.engine_state = "ready" if ready else "not_ready"
                    except Exception:  # an unanswered service is part of the report, not a failure of it
                        res.engine_state = "not_ready"
        except FleetError as exc:
            log.warning("Robot %s: reading its own state failed: %s", self.robot.name, exc)

    def _agent_state_path(self) -> Any:
        return self.connection().path(f"{self.robot.compose_dir}/{AGENT_STATE}")

    def last_result(self) -> str:
        """The outcome of the agent's last action (kept across restarts), reported until the next one."""
        try:
            data = json.loads(self._agent_state_path().read_text())
        except (OSError, ValueError):
            return ""
        value = data.get("last_result") if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""

    def _remember(self, res: CheckResult) -> None:
        if res.action == CURRENT and self.last_result() == REFUSED:  # the channel was fixed: not refused now
            res = CheckResult(
                res.robot,
                res.channel,
                res.bucket,
                CURRENT,
                UNCHANGED,
                channel_version=res.channel_version,
                at=res.at,
            )
        if not res.outcome or res.action == BAD_VERSION:
            return
        path = self._agent_state_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {
                "last_result": res.outcome,
                "version": res.channel_version,
                "action": res.action,
                "at": res.at,
            }
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(doc) + "\n")
            tmp.replace(path)
        except OSError as exc:
            log.warning("Robot %s: cannot write %s: %s", self.robot.name, path, exc)

    async def _report(self, res: CheckResult) -> None:
        if self.config.pushgateway is None:
            return
        from edge_deploy.fleet.telemetry import RobotReport, push_report

        report = RobotReport(
            robot=self.robot.name,
            version=res.version,
            channel=self.config.channel,
            healthy=res.healthy,
            last_result=self.last_result() or (UNCHANGED if res.version else ""),
            engine_state=res.engine_state or "absent",
            last_check=res.at,
            bucket=self.bucket,
        )
        try:
            await asyncio.to_thread(push_report, self.config.pushgateway, report)
            res.reported = True
        except FleetError as exc:
            log.warning("Robot %s: %s The agent goes on.", self.robot.name, exc)

    # --- forever ------------------------------------------------------------------------------------------
    async def run(
        self,
        stop: asyncio.Event | None = None,
        max_checks: int | None = None,
        on_check: Callable[[CheckResult], None] | None = None,
    ) -> CheckResult | None:
        """Check, wait, check …, until ``stop`` is set (or ``max_checks`` checks ran); returns the last.
        ``on_check`` sees each check's result."""
        stop = stop or asyncio.Event()
        last: CheckResult | None = None
        n = 0
        while not stop.is_set():
            try:
                last = await self.check_once()
                if on_check is not None:
                    on_check(last)
            except FleetError as exc:  # the robot's own shell or files failed: logged, tried again later
                log.error("Robot %s: the check failed: %s", self.robot.name, exc)
                self.failures += 1
                last = None
            n += 1
            if max_checks is not None and n >= max_checks:
                break
            wait = self.next_wait(last)
            log.info("Robot %s: next check in %.0f s.", self.robot.name, wait)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        return last
