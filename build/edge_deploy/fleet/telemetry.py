"""Fleet telemetry in pull mode: each robot's agent pushes one report to a Prometheus pushgateway at its
site, Prometheus scrapes the gateway, and the operator's tool reads the fleet back from Prometheus's HTTP
API. Prometheus carries the fleet's state so that thousands of robots cost no loop in this tool.

Metrics (prefix ``edge_robot_``; the pushgateway adds ``job="edge_robot"`` and ``robot=<name>`` from the
grouping key, and Prometheus scrapes it with ``honor_labels: true`` so those labels survive):

- ``edge_robot_info{channel, version, last_result, engine_state}`` = 1: the robot's release (``version`` is
  "" when it has none), the outcome of its last update (fleet/outcome.py's words, "" before any) and the
  engine's state ("hit", "built", "absent", ...).
- ``edge_robot_healthy{channel}``: 1 when the service's health gate passes, else 0.
- ``edge_robot_last_check_timestamp_seconds{channel}``: when the agent last checked its channel (unix time).
- ``edge_robot_bucket{channel}``: the robot's stable rollout bucket in [0, 100).

A robot that goes offline keeps its last pushed values in the gateway; ``last_check`` says how old they are.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from edge_deploy.fleet import FleetError

JOB = "edge_robot"
PREFIX = "edge_robot_"
INFO = PREFIX + "info"
HEALTHY = PREFIX + "healthy"
LAST_CHECK = PREFIX + "last_check_timestamp_seconds"
BUCKET = PREFIX + "bucket"
METRICS = (INFO, HEALTHY, LAST_CHECK, BUCKET)

_ROBOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # inventory.NAME_RE
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:@+/-]{0,128}\Z")
TIMEOUT_S = 10.0


@dataclass
class RobotReport:
    """One robot's state as its agent last reported it; the unit of pull mode's status and gates."""

    robot: str
    version: str | None
    channel: str
    healthy: bool
    last_result: str  # fleet/outcome.py's vocabulary, "" before the first update
    engine_state: str
    last_check: float  # unix time of the agent's last channel check
    bucket: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_url(url: str, what: str) -> str:
    """An http(s) URL with a host and nothing after the path, so that it can reach no shell or file."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise FleetError(f"The {what} URL {url!r} is not an http(s)://HOST[:PORT] URL.")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise FleetError(f"The {what} URL {url!r} has an invalid port.") from None
    return url.rstrip("/")


def check_report(report: RobotReport) -> None:
    """Every label value is short and plain: a report travels into Prometheus and back into commands."""
    if not _ROBOT_RE.match(report.robot):
        raise FleetError(f"The robot name {report.robot!r} is not a valid robot name.")
    for name in ("channel", "last_result", "engine_state"):
        value = getattr(report, name)
        if not isinstance(value, str) or not _LABEL_RE.match(value):
            raise FleetError(f"The report's {name} {value!r} is not a plain label value.")
    if report.version is not None and not _LABEL_RE.match(report.version):
        raise FleetError(f"The report's version {report.version!r} is not a plain label value.")
    if not 0 <= int(report.bucket) < 100:
        raise FleetError(f"The report's bucket {report.bucket!r} is not in [0, 100).")
    if not math.isfinite(float(report.last_check)):
        raise FleetError("The report's last_check is not a finite unix time.")


def report_registry(report: RobotReport) -> Any:
    """The report as a prometheus_client registry of the four ``edge_robot_`` metrics."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    info = Gauge(
        INFO,
        "The robot's release, last update outcome and engine state (value 1).",
        ["channel", "version", "last_result", "engine_state"],
        registry=registry,
    )
    info.labels(report.channel, report.version or "", report.last_result, report.engine_state).set(1)
    healthy = Gauge(
        HEALTHY, "1 when the robot's service passes its health gate.", ["channel"], registry=registry
    )
    healthy.labels(report.channel).set(1 if report.healthy else 0)
    check = Gauge(LAST_CHECK, "Unix time of the agent's last channel check.", ["channel"], registry=registry)
    check.labels(report.channel).set(report.last_check)
    bucket = Gauge(BUCKET, "The robot's stable rollout bucket in [0, 100).", ["channel"], registry=registry)
    bucket.labels(report.channel).set(report.bucket)
    return registry


def push_report(gateway_url: str, report: RobotReport) -> None:
    """Replace this robot's group in the pushgateway (grouping key robot=<name>) with the report."""
    from prometheus_client import push_to_gateway

    url = check_url(gateway_url, "pushgateway")
    check_report(report)
    try:
        push_to_gateway(
            url,
            job=JOB,
            registry=report_registry(report),
            grouping_key={"robot": report.robot},
            timeout=TIMEOUT_S,
        )
    except Exception as exc:  # urllib's errors: refused, timeout, HTTP 4xx/5xx
        raise FleetError(
            f"Could not push {report.robot}'s report to the pushgateway at {url}: {exc}."
        ) from None


def delete_report(gateway_url: str, robot: str) -> None:
    """Remove a robot's group from the pushgateway (a robot leaving the fleet)."""
    from prometheus_client import delete_from_gateway

    url = check_url(gateway_url, "pushgateway")
    if not _ROBOT_RE.match(robot):
        raise FleetError(f"The robot name {robot!r} is not a valid robot name.")
    try:
        delete_from_gateway(url, job=JOB, grouping_key={"robot": robot}, timeout=TIMEOUT_S)
    except Exception as exc:
        raise FleetError(f"Could not delete {robot}'s report from the pushgateway at {url}: {exc}.") from None


def _merge(series: dict[str, dict[str, Any]], metric: str, labels: dict[str, str], value: float) -> None:
    robot = labels.get("robot", "")
    if not _ROBOT_RE.match(robot):
        return  # not one of ours (no grouping key): ignore rather than guess
    row = series.setdefault(robot, {"robot": robot})
    row.setdefault("channel", labels.get("channel", ""))
    if metric == INFO:
        row["version"] = labels.get("version") or None
        row["last_result"] = labels.get("last_result", "")
        row["engine_state"] = labels.get("engine_state", "")
        row["channel"] = labels.get("channel", "")
    elif metric == HEALTHY:
        row["healthy"] = value >= 1
    elif metric == LAST_CHECK:
        row["last_check"] = max(value, row.get("last_check", float("-inf")))
    elif metric == BUCKET:
        row["bucket"] = int(value)


def _reports(series: dict[str, dict[str, Any]], channel: str | None) -> dict[str, RobotReport]:
    reports: dict[str, RobotReport] = {}
    for robot, row in sorted(series.items()):
        if "last_check" not in row or "version" not in row:
            continue  # a half-scraped group: the next read has it whole
        if channel is not None and row.get("channel") != channel:
            continue
        reports[robot] = RobotReport(
            robot=robot,
            version=row["version"],
            channel=row.get("channel", ""),
            healthy=bool(row.get("healthy", False)),
            last_result=row.get("last_result", ""),
            engine_state=row.get("engine_state", ""),
            last_check=float(row["last_check"]),
            bucket=int(row.get("bucket", 0)),
        )
    return reports


def read_fleet(prometheus_url: str, channel: str | None = None) -> dict[str, RobotReport]:
    """Every robot's last report as Prometheus holds it now (instant queries), by robot name; with
    ``channel``, only the robots following that channel."""
    import httpx

    url = check_url(prometheus_url, "Prometheus")
    if channel is not None and not _LABEL_RE.match(channel):
        raise FleetError(f"The channel {channel!r} is not a plain label value.")
    series: dict[str, dict[str, Any]] = {}
    try:
        with httpx.Client(timeout=TIMEOUT_S) as client:
            for metric in METRICS:
                query = f'{metric}{{job="{JOB}"}}'
                response = client.get(f"{url}/api/v1/query", params={"query": query})
                response.raise_for_status()
                body = response.json()
                if body.get("status") != "success":
                    raise FleetError(
                        f"Prometheus at {url} refused the query {query}: {body.get('error', body)}."
                    )
                for sample in body["data"]["result"]:
                    _merge(series, metric, sample["metric"], float(sample["value"][1]))
    except httpx.HTTPError as exc:
        raise FleetError(f"Could not read the fleet's telemetry from Prometheus at {url}: {exc}.") from None
    except (KeyError, TypeError, ValueError, IndexError):
        raise FleetError(f"Prometheus at {url} answered in an unexpected shape.") from None
    return _reports(series, channel)


def read_gateway(gateway_url: str, channel: str | None = None) -> dict[str, RobotReport]:
    """Every robot's last report straight from the pushgateway's /metrics, without waiting for a scrape:
    for the simulation and its tests, where no Prometheus may be running."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    url = check_url(gateway_url, "pushgateway")
    try:
        response = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise FleetError(f"Could not read the pushgateway at {url}: {exc}.") from None
    series: dict[str, dict[str, Any]] = {}
    try:
        for family in text_string_to_metric_families(response.text):
            if family.name not in METRICS:
                continue
            for sample in family.samples:
                if sample.labels.get("job") == JOB:
                    _merge(series, family.name, dict(sample.labels), float(sample.value))
    except ValueError:
        raise FleetError(f"The pushgateway at {url} answered metrics that do not parse.") from None
    return _reports(series, channel)
