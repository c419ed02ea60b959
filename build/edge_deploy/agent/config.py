"""The agent's configuration file (YAML), validated in full before the agent touches anything: every value
reaches a shell, a path, a registry or the robot's Docker engine, so a typo is one sentence naming the
file and the field."""

from __future__ import annotations

import getpass
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import ROBOT_FIELDS, USER_RE, InvalidRobotField, Robot

# fleet.yaml's robot fields that make sense on the robot itself: all but its name (the ``robot`` key), how the
# operator reaches it over SSH, and how the operator selects it. update_strategy and handover_port say how
# this robot switches releases, as in fleet.yaml.
OPERATOR_ONLY_KEYS = {"name", "host", "port", "user", "ssh_key", "known_hosts", "connect_timeout_s"}
ROBOT_KEYS = ROBOT_FIELDS - OPERATOR_ONLY_KEYS - {"groups", "labels"}
AGENT_KEYS = {
    "robot",
    "repository",
    "channel",
    "public_key",
    "site_cache",
    "pushgateway",
    "docker_host",
    "service_host",
    "poll_interval_s",
    "poll_jitter_s",
    "max_backoff_s",
    "health_timeout_s",
    "confirm_timeout_s",
    "smoke",
    "prebuild",
    "prune",
}
HOST_PORT_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9a-fA-F:.]+\]):\d{1,5}\Z"
)
REPOSITORY_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+\Z"
)
DOCKER_HOST_RE = re.compile(r"^(?:unix:///[A-Za-z0-9._/@+-]+|tcp://[A-Za-z0-9.\[\]:-]+:\d{1,5})\Z")


@dataclass(frozen=True)
class AgentConfig:
    """What one robot's agent follows (a channel of a repository, verified with a public key), where it
    reports, and the robot it updates (the same ``Robot`` as fleet.yaml's, reached locally)."""

    robot: Robot
    repository: str  # REGISTRY/repo: the channel's artifact lives at tag channel-<channel>
    channel: str
    public_key: Path
    site_cache: str | None = None  # HOST:PORT of the site's pull-through cache: images are pulled there
    pushgateway: str | None = None  # http(s)://HOST:PORT of the site's Prometheus pushgateway
    docker_host: str | None = None  # DOCKER_HOST for the robot's engine (None: the environment's)
    service_host: str = "127.0.0.1"  # where the robot's service listens, as seen by the agent
    poll_interval_s: float = 60.0
    poll_jitter_s: float = 15.0  # each wait is the interval plus a random 0..jitter
    max_backoff_s: float = 900.0  # failed checks back off exponentially up to this
    health_timeout_s: float = 600.0
    confirm_timeout_s: float = 300.0
    smoke: bool = True
    prebuild: bool = True
    prune: bool = True
    path: Path | None = None  # the file it came from

    @property
    def registry_host(self) -> str:
        return self.repository.split("/", 1)[0]


def _fail(source: str, fld: str, problem: str) -> FleetError:
    return FleetError(f"Agent config {source}: {fld!r} is invalid: {problem}.")


def _seconds(raw: dict[str, Any], key: str, default: float, lo: float, hi: float, source: str) -> float:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise _fail(source, key, f"expected {lo:g} to {hi:g} seconds, got {value!r}")
    return float(value)


def _bool(raw: dict[str, Any], key: str, default: bool, source: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail(source, key, f"expected true or false, got {value!r}")
    return value


def config_from_dict(raw: Any, base: Path, source: str = "(mapping)") -> AgentConfig:
    """An AgentConfig from a parsed YAML mapping; relative paths are relative to ``base``."""
    from edge_deploy.fleet.telemetry import check_url
    from edge_deploy.release.channel import ChannelError, check_channel_name

    if not isinstance(raw, dict):
        raise FleetError(f"Agent config {source} is not a YAML mapping.")
    unknown = sorted(k for k in raw if k not in AGENT_KEYS | ROBOT_KEYS)
    if unknown:
        raise FleetError(
            f"Agent config {source} has an unknown field {unknown[0]!r}; the fields are "
            f"{', '.join(sorted(AGENT_KEYS | ROBOT_KEYS))}."
        )
    for key in ("robot", "repository", "public_key"):
        if key not in raw:
            raise FleetError(f"Agent config {source} has no {key!r}.")
    repository = raw["repository"]
    if not isinstance(repository, str) or not REPOSITORY_RE.match(repository) or "/" not in repository:
        raise _fail(source, "repository", f"expected REGISTRY[:PORT]/name, got {repository!r}")
    try:
        channel = check_channel_name(raw.get("channel", "stable"))
    except ChannelError as exc:
        raise _fail(source, "channel", str(exc).rstrip(".")) from None
    key = raw["public_key"]
    if not isinstance(key, str) or not key:
        raise _fail(source, "public_key", "expected the path of the fleet's cosign.pub")
    public_key = Path(key).expanduser()
    public_key = public_key if public_key.is_absolute() else base / public_key
    site_cache = raw.get("site_cache")
    if site_cache is not None and (not isinstance(site_cache, str) or not HOST_PORT_RE.match(site_cache)):
        raise _fail(source, "site_cache", f"expected HOST:PORT, got {site_cache!r}")
    pushgateway = raw.get("pushgateway")
    if pushgateway is not None:
        if not isinstance(pushgateway, str):
            raise _fail(source, "pushgateway", f"expected an http(s) URL, got {pushgateway!r}")
        try:
            pushgateway = check_url(pushgateway, "pushgateway")
        except FleetError as exc:
            raise _fail(source, "pushgateway", str(exc).rstrip(".")) from None
    docker_host = raw.get("docker_host")
    if docker_host is not None and (
        not isinstance(docker_host, str) or not DOCKER_HOST_RE.match(docker_host)
    ):
        raise _fail(source, "docker_host", f"expected unix:///path or tcp://HOST:PORT, got {docker_host!r}")
    service_host = raw.get("service_host", "127.0.0.1")
    from edge_deploy.fleet.inventory import host_problem

    if host_problem(service_host) is not None:
        raise _fail(source, "service_host", str(host_problem(service_host)))
    user = getpass.getuser()
    robot_kw = {k: raw[k] for k in ROBOT_KEYS if k in raw}
    try:
        robot = Robot(
            name=raw["robot"],
            host="127.0.0.1",
            user=user if USER_RE.match(user) else "robot",
            **robot_kw,
        )
    except InvalidRobotField as exc:
        raise _fail(source, exc.field, exc.problem) from None
    except TypeError as exc:  # a value of the wrong type where the dataclass compares it
        raise FleetError(f"Agent config {source}: a robot field has the wrong type ({exc}).") from None
    interval = _seconds(raw, "poll_interval_s", 60.0, 1, 86400, source)
    return AgentConfig(
        robot=robot,
        repository=repository,
        channel=channel,
        public_key=public_key,
        site_cache=site_cache,
        pushgateway=pushgateway,
        docker_host=docker_host,
        service_host=service_host,
        poll_interval_s=interval,
        poll_jitter_s=_seconds(raw, "poll_jitter_s", min(interval / 4, 300.0), 0, 86400, source),
        max_backoff_s=_seconds(raw, "max_backoff_s", 900.0, 1, 86400, source),
        health_timeout_s=_seconds(raw, "health_timeout_s", 600.0, 1, 86400, source),
        confirm_timeout_s=_seconds(raw, "confirm_timeout_s", 300.0, 1, 86400, source),
        smoke=_bool(raw, "smoke", True, source),
        prebuild=_bool(raw, "prebuild", True, source),
        prune=_bool(raw, "prune", True, source),
        path=base / "agent.yaml" if source == "(mapping)" else Path(source),
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent's YAML file."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"Agent config {path} cannot be read ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise FleetError(f"Agent config {path} is not UTF-8 text.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise FleetError(f"Agent config {path} is not valid YAML{where}.") from None
    return config_from_dict(raw, path.resolve().parent, str(path))
