"""``fleet.yaml`` → dataclasses. Every robot is validated up front, so a typo stops the tool before it
touches any robot, with one sentence naming the robot and the field."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_deploy.fleet import FleetError
from edge_runtime.errors import EdgeError
from edge_runtime.jetson import jetson_module

# Values that reach a robot's shell, a path on the robot or its systemd unit: a small alphabet each, anchored
# with \Z (``$`` would let a trailing newline through).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_RE = re.compile(rf"^(?=.{{1,253}}\Z){HOST_LABEL}(?:\.{HOST_LABEL})*\.?\Z")
PATH_PART_RE = re.compile(r"^[A-Za-z0-9._+@][A-Za-z0-9._+@-]{0,127}\Z")  # never starts with '-'
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:@+/-]{0,63}\Z")
PLATFORMS = ("linux/arm64", "linux/amd64")
# How a robot changes releases (docs/fleet.md, "Update strategies"): hand-over starts the new release beside
# the running one and gates it before it takes the service address; stop-start stops the old one first.
UPDATE_STRATEGIES = ("hand-over", "stop-start")

ROBOT_FIELDS = {
    "name",
    "host",
    "port",
    "user",
    "ssh_key",
    "known_hosts",
    "jetson_model",
    "groups",
    "labels",
    "compose_dir",
    "service_port",
    "platform",
    "min_free_mb",
    "lock_wait_s",
    "gpu",
    "allow_cpu_fallback",
    "connect_timeout_s",
    "health_start_interval_s",
    "update_strategy",
    "handover_port",
}
DEFAULT_FIELDS = ROBOT_FIELDS - {"name", "host"}
TOP_FIELDS = {"fleet", "defaults", "robots", "public_key", "releases_dir"}


@dataclass(frozen=True)
class Robot:
    """One robot as the tool reaches it: SSH endpoint, identity checks, and where its releases live."""

    name: str
    host: str
    port: int = 22
    user: str = "robot"
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    jetson_model: str = "orin_nano"
    groups: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    compose_dir: str = "edge"  # relative to the user's home, or absolute
    service_port: int = 8080  # EDGE_PORT; robots sharing one network namespace need distinct ports
    platform: str = "linux/arm64"
    min_free_mb: int = 1024  # refuse an update when the compose dir's filesystem has less free
    lock_wait_s: float = 30.0  # how long to wait for the application's update lock before skipping
    # The robot has a GPU: its service runs with compose.jetson.yaml (runtime: nvidia) and must serve TensorRT;
    # serving ONNX Runtime on the CPU fails the health gate unless allow_cpu_fallback (or the release) says so.
    gpu: bool = True
    allow_cpu_fallback: bool = False  # accept ONNX Runtime on the CPU on a gpu robot, on purpose
    connect_timeout_s: float = 10.0
    # How often Docker runs the healthcheck while the service starts (compose `start_interval`): it bounds how
    # soon `up --wait` sees a new release healthy. Each check starts a Python process; raise it on robots
    # where that is slow (the simulator's emulated arm64 robots use 5 s).
    health_start_interval_s: float = 1.0
    # hand-over (default; a robot without the memory for two releases at once falls back to stop-start, and
    # says so in the result) or stop-start; a rollout or rollback may override it.
    update_strategy: str = "hand-over"
    # The port a hand-over gates the new release on before it takes service_port (default: service_port
    # + 1000, or - 1000 above 64535); loopback only, like the service.
    handover_port: int | None = None

    @property
    def gate_port(self) -> int:
        """The hand-over's gate port (``handover_port`` or its default)."""
        if self.handover_port is not None:
            return self.handover_port
        return self.service_port + 1000 if self.service_port <= 64535 else self.service_port - 1000

    def __post_init__(self) -> None:
        # A Robot made in Python (edge_deploy.api.deploy_to_device) gets the same checks as fleet.yaml.
        bad = robot_problem(self)
        if bad is not None:
            raise InvalidRobotField(self.name, *bad)

    def in_group(self, group: str) -> bool:
        return group in self.groups


class InvalidRobotField(FleetError):
    """One value of a robot cannot be used safely; ``field`` and ``problem`` let fleet.yaml's loader name
    the file too."""

    def __init__(self, robot: object, fld: str, problem: str) -> None:
        super().__init__(f"Robot {robot!r} has an invalid {fld!r}: {problem}.")
        self.field = fld
        self.problem = problem


def compose_dir_problem(value: object) -> str | None:
    """Why ``value`` cannot be a robot's compose directory (it is used in shell commands, SFTP paths and the
    systemd unit's WorkingDirectory), or None."""
    expected = (
        "expected a directory path (relative to the home directory, or absolute) of letters, digits and "
        "'.', '_', '+', '@', '-', no '..' and no part starting with '-'"
    )
    if not isinstance(value, str) or len(value) > 255:
        return f"{expected}, got {value!r}"
    parts = (value[1:] if value.startswith("/") else value).split("/")
    if any(p == ".." or not PATH_PART_RE.match(p) for p in parts):
        return f"{expected}, got {value!r}"
    return None


def host_problem(value: object) -> str | None:
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            if HOST_RE.match(value):
                return None
    return f"expected a host name or IP address, got {value!r}"


def _seconds_problem(value: object, lo: float, hi: float, lo_open: bool = False) -> str | None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (lo < value if lo_open else lo <= value)
        and value <= hi
    )
    return (
        None
        if ok
        else f"expected {'more than' if lo_open else 'from'} {lo:g} to {hi:g} seconds, got {value!r}"
    )


def _port_problem(value: object) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    return None if ok else f"expected a whole number from 1 to 65535, got {value!r}"


def robot_problem(r: Robot) -> tuple[str, str] | None:
    """The first field of ``r`` that must not reach the robot, and why; None when every value is safe."""
    checks: list[tuple[str, str | None]] = [
        (
            "name",
            None
            if isinstance(r.name, str) and NAME_RE.match(r.name)
            else f"expected letters, digits, '.', '_' or '-', got {r.name!r}",
        ),
        ("host", host_problem(r.host)),
        ("port", _port_problem(r.port)),
        (
            "user",
            None
            if isinstance(r.user, str) and USER_RE.match(r.user)
            else f"expected a login name, got {r.user!r}",
        ),
        ("compose_dir", compose_dir_problem(r.compose_dir)),
        ("service_port", _port_problem(r.service_port)),
        (
            "platform",
            None if r.platform in PLATFORMS else f"expected {' or '.join(PLATFORMS)}, got {r.platform!r}",
        ),
        (
            "groups",
            None
            if all(isinstance(g, str) and NAME_RE.match(g) for g in r.groups)
            else f"expected group names of letters, digits, '.', '_' or '-', got {list(r.groups)!r}",
        ),
        ("labels", _labels_problem(r.labels)),
        (
            "min_free_mb",
            None
            if isinstance(r.min_free_mb, int)
            and not isinstance(r.min_free_mb, bool)
            and 0 <= r.min_free_mb <= 1 << 30
            else f"expected a whole number of MB, got {r.min_free_mb!r}",
        ),
        ("lock_wait_s", _seconds_problem(r.lock_wait_s, 0, 86400)),
        ("connect_timeout_s", _seconds_problem(r.connect_timeout_s, 0, 600, lo_open=True)),
        ("health_start_interval_s", _seconds_problem(r.health_start_interval_s, 0.1, 300)),
        (
            "update_strategy",
            None
            if r.update_strategy in UPDATE_STRATEGIES
            else f"expected {' or '.join(UPDATE_STRATEGIES)}, got {r.update_strategy!r}",
        ),
        (
            "handover_port",
            None
            if r.handover_port is None
            else _port_problem(r.handover_port)
            or (
                f"expected a port other than service_port {r.service_port}, got {r.handover_port!r}"
                if r.handover_port == r.service_port
                else None
            ),
        ),
    ]
    return next(((fld, problem) for fld, problem in checks if problem is not None), None)


def _labels_problem(labels: object) -> str | None:
    if not isinstance(labels, dict):
        return "expected a mapping of label to value"
    for k, v in labels.items():
        if not (isinstance(k, str) and LABEL_KEY_RE.match(k)):
            return f"expected label names of letters, digits, '.', '_', '/' or '-', got {k!r}"
        if not (isinstance(v, str) and LABEL_VALUE_RE.match(v)):
            return f"expected a label value of up to 63 letters, digits or '.', '_', ':', '@', '+', '/', '-', got {v!r}"
    return None


@dataclass(frozen=True)
class Fleet:
    name: str
    robots: tuple[Robot, ...]
    path: Path | None = None
    public_key: Path | None = None  # cosign public key: when set, every rollout verifies the signature
    releases_dir: Path | None = None

    def select(self, group: str | None = None, devices: list[str] | None = None) -> list[Robot]:
        """Robots of a group and/or by name, in inventory order; unknown names are an error."""
        robots = list(self.robots)
        if devices:
            known = {r.name for r in robots}
            unknown = [d for d in devices if d not in known]
            if unknown:
                raise FleetError(f"Robot {unknown[0]!r} is not in the fleet inventory.")
            robots = [r for r in robots if r.name in devices]
        if group is not None:
            robots = [r for r in robots if r.in_group(group)]
            if not robots:
                raise FleetError(f"No robot in the fleet inventory belongs to group {group!r}.")
        return robots

    def robot(self, name: str) -> Robot:
        return self.select(devices=[name])[0]


def _err(where: str, fld: str, problem: str) -> FleetError:
    return FleetError(f"fleet.yaml: {where} has an invalid {fld!r}: {problem}.")


def _path(value: Any, base: Path, where: str, fld: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _err(where, fld, "expected a file path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _int(value: Any, where: str, fld: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _err(where, fld, f"expected a whole number from {lo} to {hi}, got {value!r}")
    return value


def _num(value: Any, where: str, fld: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _err(where, fld, f"expected a non-negative number, got {value!r}")
    return float(value)


def _label_value(value: Any) -> Any:
    """YAML reads ``rack: 3`` as a number and ``on: yes`` as a boolean; labels are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _robot(raw: dict[str, Any], defaults: dict[str, Any], base: Path, index: int) -> Robot:
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FleetError(
            f"fleet.yaml: robot #{index + 1} needs a 'name' of letters, digits, '.', '_' or '-'"
            f" (got {name!r})."
        )
    where = f"robot {name!r}"
    unknown = sorted(set(raw) - ROBOT_FIELDS)
    if unknown:
        raise FleetError(f"fleet.yaml: {where} has an unknown field {unknown[0]!r}.")
    d = {**defaults, **raw}
    host = d.get("host")
    if host_problem(host) is not None:
        raise _err(where, "host", str(host_problem(host)))
    kw: dict[str, Any] = {"name": name, "host": host}
    if "port" in d:
        kw["port"] = _int(d["port"], where, "port", 1, 65535)
    if "service_port" in d:
        kw["service_port"] = _int(d["service_port"], where, "service_port", 1, 65535)
    if "user" in d:
        if not isinstance(d["user"], str) or not USER_RE.match(d["user"]):
            raise _err(where, "user", f"expected a login name, got {d['user']!r}")
        kw["user"] = d["user"]
    for key in ("ssh_key", "known_hosts"):
        if key in d:
            p = _path(d[key], base, where, key)
            if not p.is_file():
                raise _err(where, key, f"{p} does not exist")
            kw[key] = p
    if "jetson_model" in d:
        try:
            kw["jetson_model"] = jetson_module(str(d["jetson_model"])).key
        except EdgeError as exc:
            raise _err(where, "jetson_model", str(exc).rstrip(".")) from None
    if "groups" in d:
        groups = d["groups"]
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise _err(where, "groups", "expected a list of group names")
        kw["groups"] = tuple(groups)
    if "labels" in d:
        labels = d["labels"]
        if not isinstance(labels, dict):
            raise _err(where, "labels", "expected a mapping of label to value")
        kw["labels"] = {k: _label_value(v) for k, v in labels.items()}
    if "compose_dir" in d:
        cd = d["compose_dir"]
        if isinstance(cd, str) and cd.startswith("~/"):
            cd = cd[2:]  # the SSH session starts in the home directory
        if isinstance(cd, str):
            cd = cd.rstrip("/") if cd.strip("/") else cd
        problem = compose_dir_problem(cd)
        if problem is not None:
            raise _err(where, "compose_dir", problem)
        kw["compose_dir"] = cd
    if "platform" in d:
        if d["platform"] not in PLATFORMS:
            raise _err(where, "platform", f"expected linux/arm64 or linux/amd64, got {d['platform']!r}")
        kw["platform"] = d["platform"]
    if "min_free_mb" in d:
        kw["min_free_mb"] = _int(d["min_free_mb"], where, "min_free_mb", 0, 1 << 30)
    for key in ("lock_wait_s", "connect_timeout_s"):
        if key in d:
            kw[key] = _num(d[key], where, key)
    if "health_start_interval_s" in d:
        v = _num(d["health_start_interval_s"], where, "health_start_interval_s")
        if not 0.1 <= v <= 300:
            raise _err(where, "health_start_interval_s", f"expected 0.1 to 300 seconds, got {v:g}")
        kw["health_start_interval_s"] = v
    if "handover_port" in d:
        kw["handover_port"] = _int(d["handover_port"], where, "handover_port", 1, 65535)
    if "update_strategy" in d:
        if d["update_strategy"] not in UPDATE_STRATEGIES:
            raise _err(
                where,
                "update_strategy",
                f"expected {' or '.join(UPDATE_STRATEGIES)}, got {d['update_strategy']!r}",
            )
        kw["update_strategy"] = d["update_strategy"]
    for key in ("gpu", "allow_cpu_fallback"):
        if key in d:
            if not isinstance(d[key], bool):
                raise _err(where, key, f"expected true or false, got {d[key]!r}")
            kw[key] = d[key]
    try:
        return Robot(**kw)
    except InvalidRobotField as exc:  # the checks every Robot gets (robot_problem)
        raise _err(where, exc.field, exc.problem) from None


def parse_fleet(data: Any, base: Path, path: Path | None = None) -> Fleet:
    """Validate the parsed YAML document; relative paths are relative to ``base`` (the file's folder)."""
    if not isinstance(data, dict):
        raise FleetError("fleet.yaml: the document must be a mapping with a 'robots' list.")
    unknown = sorted(set(data) - TOP_FIELDS)
    if unknown:
        raise FleetError(f"fleet.yaml: unknown top-level field {unknown[0]!r}.")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FleetError("fleet.yaml: 'defaults' must be a mapping of robot fields.")
    bad = sorted(set(defaults) - DEFAULT_FIELDS)
    if bad:
        raise FleetError(f"fleet.yaml: 'defaults' has a field {bad[0]!r} that cannot be shared by robots.")
    robots_raw = data.get("robots")
    if not isinstance(robots_raw, list) or not robots_raw:
        raise FleetError("fleet.yaml: 'robots' must be a non-empty list.")
    robots: list[Robot] = []
    for i, raw in enumerate(robots_raw):
        if not isinstance(raw, dict):
            raise FleetError(f"fleet.yaml: robot #{i + 1} must be a mapping of fields.")
        robot = _robot(raw, defaults, base, i)
        if any(r.name == robot.name for r in robots):
            raise FleetError(f"fleet.yaml: robot {robot.name!r} appears twice.")
        clash = next((r for r in robots if (r.host, r.port) == (robot.host, robot.port)), None)
        if clash is not None:
            raise FleetError(
                f"fleet.yaml: robot {robot.name!r} has the same host and port as {clash.name!r}."
            )
        robots.append(robot)
    public_key = data.get("public_key")
    pk = _path(public_key, base, "the fleet", "public_key") if public_key else None
    if pk is not None and not pk.is_file():
        raise FleetError(f"fleet.yaml: the fleet has an invalid 'public_key': {pk} does not exist.")
    rd = data.get("releases_dir")
    name = data.get("fleet", path.stem if path else "fleet")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FleetError(f"fleet.yaml: 'fleet' must be a short name, got {name!r}.")
    return Fleet(
        name=name,
        robots=tuple(robots),
        path=path,
        public_key=pk,
        releases_dir=_path(rd, base, "the fleet", "releases_dir") if rd else None,
    )


def load_fleet(path: Path) -> Fleet:
    """Read and validate ``fleet.yaml``; every problem is one sentence naming the file, robot and field."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FleetError(f"Fleet inventory {path} does not exist.") from None
    except OSError as exc:
        raise FleetError(f"Fleet inventory {path} cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError as exc:
        raise FleetError(f"Fleet inventory {path} is not UTF-8 text (byte {exc.start}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise FleetError(f"Fleet inventory {path} is not valid YAML{where} ({problem}).") from None
    try:
        return parse_fleet(data, path.parent.resolve(), path)
    except FleetError as exc:
        raise FleetError(str(exc).replace("fleet.yaml:", f"{path}:", 1)) from None


def dump_fleet(fleet: Fleet) -> str:
    """YAML for a fleet (used by the simulator to write the inventory it generates)."""
    robots = []
    for r in fleet.robots:
        d: dict[str, Any] = {
            "name": r.name,
            "host": r.host,
            "port": r.port,
            "user": r.user,
            "jetson_model": r.jetson_model,
            "groups": list(r.groups),
            "compose_dir": r.compose_dir,
            "service_port": r.service_port,
            "platform": r.platform,
            "gpu": r.gpu,
            "allow_cpu_fallback": r.allow_cpu_fallback,
            "min_free_mb": r.min_free_mb,
            "lock_wait_s": r.lock_wait_s,
            "health_start_interval_s": r.health_start_interval_s,
            "update_strategy": r.update_strategy,
        }
        if r.handover_port is not None:
            d["handover_port"] = r.handover_port
        if r.labels:
            d["labels"] = dict(r.labels)
        if r.ssh_key:
            d["ssh_key"] = str(r.ssh_key)
        if r.known_hosts:
            d["known_hosts"] = str(r.known_hosts)
        robots.append(d)
    doc: dict[str, Any] = {"fleet": fleet.name, "robots": robots}
    if fleet.public_key:
        doc["public_key"] = str(fleet.public_key)
    if fleet.releases_dir:
        doc["releases_dir"] = str(fleet.releases_dir)
    return yaml.safe_dump(doc, sort_keys=False)
