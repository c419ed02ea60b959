"""The operator's side of pull mode: a rollout publishes the release on a signed channel at growing
percentages and reads the fleet's health back from telemetry (robots report through their site's
pushgateway; Prometheus, or the gateway itself, is read), then widens or aborts. An abort reverts the
channel to the release it carried before, at 100 %: robots that took the bad release roll back to it on
their own, the others never pull it.

The thresholds mean what they mean in SSH mode: ``canary`` robots first (the lowest buckets among the
robots that report on the channel), where any failure stops the rollout; after that, more than
``max_failures`` failed robots stops it. A robot that has not checked in since the wave was published,
when the wave's time is up, is offline: not a failure, it takes the release when it returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.outcome import FAILED, FAILURES, NOT_REACHED, UPDATED

log = logging.getLogger(__name__)
Progress = Callable[[str, str, str], None]  # robot (or "channel"), step, detail
TELEMETRY_POLL_S = 2.0


@dataclass(frozen=True, kw_only=True)
class PullRolloutOptions:
    """One pull-mode rollout: which release, on which channel, in which waves, read from which telemetry."""

    version: str
    channel: str = "stable"
    repository: str | None = None  # REGISTRY/repo of the channel; None: the release's runtime repository
    sign_key: Path | str  # the fleet's cosign private key (or a key reference): the channel is signed
    public_key: Path  # the fleet's public key: the release's images and the previous channel are verified
    releases_dir: Path = Path("releases")
    wave_percents: tuple[float, ...] = ()  # one value P: P, 2P, … 100; several: those, then 100
    canary: int = 0
    max_failures: int = 0
    prometheus: str | None = None  # Prometheus's HTTP API …
    pushgateway: str | None = None  # … or the pushgateway's /metrics, where no Prometheus runs
    wave_timeout_s: float = 900.0  # how long a wave waits for its robots to report
    password: str | None = None  # COSIGN_PASSWORD by default


@dataclass
class PullRobot:
    robot: str
    bucket: int
    outcome: str
    version: str | None
    reason: str = ""
    wave: int = 0

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES


@dataclass
class PullRolloutResult:
    version: str
    channel: str
    repository: str
    waves: list[dict[str, Any]] = field(default_factory=list)  # percent, robots, seconds
    robots: list[PullRobot] = field(default_factory=list)
    stopped: bool = False
    stop_reason: str = ""
    reverted_to: str | None = None  # the release the channel went back to after an abort
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.stopped and not any(r.failed for r in self.robots)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def wave_plan(wave_percents: tuple[float, ...], canary: int, buckets: list[int]) -> list[int]:
    """The channel's percentages, one per wave, ending at 100: a canary wave that reaches the ``canary``
    lowest ``buckets`` (the robots known from telemetry), then one ``P`` as P, 2P, … or the values given."""
    for p in wave_percents:
        if not (isinstance(p, int | float) and math.isfinite(p) and 0 < p <= 100):
            raise FleetError(f"A wave percentage must be more than 0 and at most 100, got {p!r}.")
    steps: list[int] = []
    if canary > 0 and buckets:
        steps.append(sorted(buckets)[min(canary, len(buckets)) - 1] + 1)
    if len(wave_percents) == 1:
        p = wave_percents[0]
        steps += [min(100, math.ceil(p * i)) for i in range(1, math.ceil(100 / p) + 1)]
    else:
        steps += [math.ceil(p) for p in wave_percents]
    steps.append(100)
    out: list[int] = []
    for s in steps:
        if not out or s > out[-1]:
            out.append(s)
    return out


def read_reports(opts: PullRolloutOptions) -> dict[str, Any]:
    """The channel's robots as telemetry reports them now (robot → RobotReport)."""
    from edge_deploy.fleet import telemetry

    if opts.prometheus:
        return dict(telemetry.read_fleet(opts.prometheus, opts.channel))
    if opts.pushgateway:
        return dict(telemetry.read_gateway(opts.pushgateway, opts.channel))
    raise FleetError(
        "A pull-mode rollout reads the fleet's health from telemetry: pass `prometheus` or `pushgateway`."
    )


def judge(report: Any, version: str, since: float) -> tuple[str, str] | None:
    """A robot's outcome in a wave published at ``since``, from its report; None while it has not settled."""
    if report.last_check < since:
        return None
    if report.version == version and report.healthy:
        return UPDATED, ""
    if report.version != version and report.last_result in FAILURES:
        was = report.version or "no release"
        return report.last_result, f"reports {report.last_result} and runs {was}"
    return None


def pull_rollout(
    opts: PullRolloutOptions,
    progress: Progress | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> PullRolloutResult:
    """Publish, wait, judge, widen; abort and revert the channel when a threshold is crossed."""
    from edge_deploy.release.channel import (
        ChannelMissing,
        check_channel_name,
        load_public_key,
        publish_channel,
        read_channel,
        verify_release_image,
    )
    from edge_deploy.release.manifest import load_release
    from edge_deploy.release.registry import Registry

    say = progress or (lambda *_: None)
    t_start = time.monotonic()
    check_channel_name(opts.channel)
    manifest = load_release(opts.version, opts.releases_dir)
    repository = opts.repository or manifest.runtime.repository
    registries: dict[str, Registry] = {}
    key = load_public_key(opts.public_key)
    for name, image in manifest.images.items():  # refused here, before any robot could see it
        verify_release_image(name, image.repository, image.digest, image.platforms, key, registries)
    try:
        before = read_channel(repository, opts.channel, opts.public_key, registries=registries)
        previous = before.manifest if before.version != manifest.version else None
    except ChannelMissing:
        previous = None
    res = PullRolloutResult(manifest.version, opts.channel, repository)
    reports = read_reports(opts)
    plan = wave_plan(opts.wave_percents, opts.canary, [r.bucket for r in reports.values()])
    settled: dict[str, PullRobot] = {}
    for n, percent in enumerate(plan, 1):
        t_wave = time.monotonic()
        published = time.time()
        publish_channel(repository, opts.channel, manifest, percent, opts.sign_key, password=opts.password)
        say("channel", f"wave {n}", f"{opts.channel} → {manifest.version} at {percent} %")
        wave = _wait_wave(opts, manifest.version, percent, published, settled, n, say, sleep)
        res.waves.append({"percent": percent, "robots": wave, "seconds": round(time.monotonic() - t_wave, 1)})
        failed = [r for r in settled.values() if r.failed]
        canary_wave = opts.canary > 0 and n == 1
        if (canary_wave and failed) or len(failed) > opts.max_failures:
            res.stopped = True
            limit = "in the canary wave" if canary_wave else f"more than --max-failures {opts.max_failures}"
            res.stop_reason = f"{len(failed)} robot(s) failed {limit} ({', '.join(r.robot for r in failed)})"
            res.reverted_to = _revert(opts, repository, manifest, previous, say)
            break
        if wave and n < len(plan) and all(settled[r].outcome == NOT_REACHED for r in wave):  # no evidence
            res.stopped = True
            res.stop_reason = f"no robot of wave {n} reported within {opts.wave_timeout_s:g} s; the channel stays at {percent} %"
            break
    res.robots = sorted(settled.values(), key=lambda r: r.robot)
    res.seconds = round(time.monotonic() - t_start, 1)
    return res


def _wait_wave(
    opts: PullRolloutOptions,
    version: str,
    percent: int,
    published: float,
    settled: dict[str, PullRobot],
    n: int,
    say: Progress,
    sleep: Callable[[float], None],
) -> list[str]:
    """Read telemetry until every robot of the wave (bucket < percent, not settled in an earlier wave) has
    settled or the wave's time is up; returns the wave's robots. Robots silent till then are offline."""
    deadline = time.monotonic() + opts.wave_timeout_s
    while True:
        try:
            reports = read_reports(opts)
        except FleetError as exc:  # telemetry down for a moment: the robots go on, so does the wait
            log.warning("%s", exc)
            reports = {}
        wave = {name: r for name, r in reports.items() if r.bucket < percent and name not in settled}
        pending = []
        for name, report in wave.items():
            verdict = judge(report, version, published)
            if verdict is None:
                pending.append(name)
                continue
            outcome, reason = verdict
            settled[name] = PullRobot(name, report.bucket, outcome, report.version, reason, n)
            say(name, outcome, reason or f"on {version}, healthy")
        if not pending:  # the wave's robots: all settled in this wave, in any of its reads
            return [name for name, robot in settled.items() if robot.wave == n]
        if time.monotonic() >= deadline:
            for name in pending:
                report = wave[name]
                if report.last_check < published:
                    outcome = NOT_REACHED
                    reason = (
                        "did not check in during the wave (offline?); it takes the release when it returns"
                    )
                else:
                    outcome = FAILED
                    reason = (
                        f"reports {report.version or 'no release'} ({report.last_result or 'no result'}, "
                        f"{'healthy' if report.healthy else 'not healthy'}), not {version} healthy, "
                        f"after {opts.wave_timeout_s:g} s"
                    )
                settled[name] = PullRobot(name, report.bucket, outcome, report.version, reason, n)
                say(name, outcome, reason)
            return [name for name, robot in settled.items() if robot.wave == n]
        sleep(TELEMETRY_POLL_S)


def _revert(
    opts: PullRolloutOptions, repository: str, manifest: Any, previous: Any, say: Progress
) -> str | None:
    """Put the channel back: the release it carried before at 100 %, or this release at 0 % when there was
    none (no robot takes it any more). Returns the release reverted to."""
    from edge_deploy.release.channel import publish_channel

    if previous is not None:
        publish_channel(repository, opts.channel, previous, 100, opts.sign_key, password=opts.password)
        say("channel", "reverted", f"{opts.channel} → {previous.version} at 100 %")
        return str(previous.version)
    publish_channel(repository, opts.channel, manifest, 0, opts.sign_key, password=opts.password)
    say("channel", "reverted", f"{opts.channel} → {manifest.version} at 0 % (no earlier release on it)")
    return None


def pull_status(
    *, prometheus: str | None = None, pushgateway: str | None = None, channel: str | None = None
) -> list[dict[str, Any]]:
    """Each robot's last report (version, health, last result, engine, last check, bucket), by name."""
    from edge_deploy.fleet import telemetry

    if prometheus:
        reports = telemetry.read_fleet(prometheus, channel)
    elif pushgateway:
        reports = telemetry.read_gateway(pushgateway, channel)
    else:
        raise FleetError("Status in pull mode reads telemetry: pass `prometheus` or `pushgateway`.")
    now = time.time()
    return [
        {**r.to_dict(), "age_s": round(max(0.0, now - r.last_check), 1)}
        for r in sorted(reports.values(), key=lambda r: r.robot)
    ]


def pull_history(
    prometheus: str, robot: str, hours: float = 24.0, step_s: int | None = None
) -> list[dict[str, Any]]:
    """One robot's changes of release, result and engine state over the last ``hours``, from Prometheus's
    range queries on ``edge_robot_info`` (a pushgateway keeps only the last report, so it has no history).
    ``step_s``: the resolution (default: the range in 10,000 steps, Prometheus allows 11,000; at least 1 s)."""
    import httpx

    from edge_deploy.fleet.inventory import NAME_RE
    from edge_deploy.fleet.telemetry import INFO, JOB, check_url

    if not NAME_RE.match(robot):
        raise FleetError(f"The robot name {robot!r} is not a valid robot name.")
    if not (isinstance(hours, int | float) and 0 < hours <= 24 * 90):
        raise FleetError(f"History covers more than 0 and at most {24 * 90} hours, got {hours!r}.")
    url = check_url(prometheus, "Prometheus")
    end = time.time()
    params: dict[str, str | int | float] = {
        "query": f'{INFO}{{job="{JOB}",robot="{robot}"}}',
        "start": end - hours * 3600,
        "end": end,
        "step": step_s or max(1, math.ceil(hours * 3600 / 10000)),
    }
    try:
        resp = httpx.get(f"{url}/api/v1/query_range", params=params, timeout=30)
        resp.raise_for_status()
        series = resp.json()["data"]["result"]
        points = sorted(
            (
                float(t),
                tuple(s["metric"].get(k, "") for k in ("version", "last_result", "engine_state", "channel")),
            )
            for s in series
            for t, _ in s["values"]
        )
    except httpx.HTTPError as exc:
        raise FleetError(f"Could not read {robot}'s history from Prometheus at {url}: {exc}.") from None
    except (KeyError, TypeError, ValueError):
        raise FleetError(f"Prometheus at {url} answered the history query in an unexpected shape.") from None
    out: list[dict[str, Any]] = []
    last: tuple[str, ...] | None = None
    for t, labels in points:
        if labels != last:
            version, result, engine, channel = labels
            out.append(
                {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                    "version": version or None,
                    "result": result,
                    "engine_state": engine,
                    "channel": channel,
                }
            )
            last = labels
    return out
