"""A site cache: a ``distribution`` registry (Debian's ``docker-registry``) in proxy mode in front of the
fleet's registry, so that N robots at a site cost one upstream download per layer. Robots pull through it
by digest (``SITE/repo@sha256:X``); integrity still comes from the digest and the release's signatures, so
the cache holds no trust of its own and needs no key.

Layout under ``<state_root>/<name>/``: ``config.yml`` (written by this module, never by hand),
``site.json`` (listen address, upstream and its user name, PID; never the password), ``registry.log`` (the registry's log and access log) and
``storage/`` (the cached blobs). The process is started and stopped by its recorded PID, recognised by its
command line naming ``config.yml``. The same runner serves a plain registry (no ``upstream``): the
simulation and benchmarks use one as a private upstream whose access log counts the bytes it served.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.telemetry import check_url
from edge_deploy.simulation.processes import alive, free_port, terminate
from edge_deploy.simulation.state import save_record

DEFAULT_STATE_ROOT = Path(os.environ.get("EDGE_SITE_STATE", "/var/lib/edge-deploy/sites"))
DEFAULT_LISTEN = "127.0.0.1:5050"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_HOST_RE = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\Z"
)
# The registry's access log (gorilla's combined format): one line per request with status and bytes sent.
_ACCESS_RE = re.compile(
    r'"(?P<method>GET|HEAD) /v2/(?P<repo>[^ ]+)/blobs/(?P<digest>sha256:[0-9a-f]{64}) HTTP/[0-9.]+" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)"
)


def registry_binary() -> str:
    """Debian 12's ``docker-registry`` (distribution 2.8, which has proxy mode)."""
    path = shutil.which("docker-registry") or shutil.which("docker-registry", path="/usr/bin:/usr/sbin")
    if path is None:
        raise FleetError(
            "docker-registry is not installed; run scripts/host-setup (Debian package docker-registry)."
        )
    return path


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise FleetError(f"The site name {name!r} is not valid (letters, digits, '.', '_', '-'; 63 at most).")
    return name


def check_listen(listen: str, *, allow_public: bool = False) -> str:
    """HOST:PORT for the cache to listen on; loopback unless ``allow_public`` (a site's robots on its LAN)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise FleetError(f"The listen address {listen!r} is not HOST:PORT.")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        if not _HOST_RE.match(host):
            raise FleetError(f"The listen address {listen!r} has an invalid host.") from None
        loopback = host == "localhost"
    if not loopback and not allow_public:
        raise FleetError(
            f"The listen address {listen!r} is not on loopback; pass `allow_public` to serve a site's LAN.",
            option="allow_public",
        )
    return listen


@dataclass
class Site:
    """One cache (or plain registry) started by this module, as ``site.json`` records it."""

    name: str
    state_dir: str
    listen: str
    upstream: str | None  # None: a plain registry, not a cache
    debug_port: int
    pid: int | None = None
    upstream_username: str | None = None  # a private upstream's user (its password is only in config.yml)

    @property
    def config(self) -> Path:
        return Path(self.state_dir) / "config.yml"

    @property
    def log(self) -> Path:
        return Path(self.state_dir) / "registry.log"

    @property
    def address(self) -> str:
        """What robots put before ``/repo@sha256:...`` (the agent's ``site_cache``)."""
        return self.listen

    @property
    def running(self) -> bool:
        return alive(self.pid, str(self.config))

    def save(self) -> None:
        save_record(self, Path(self.state_dir) / "site.json")

    @classmethod
    def load(cls, name: str, state_root: Path = DEFAULT_STATE_ROOT) -> Site:
        path = state_root / check_name(name) / "site.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise FleetError(f"No site named {name!r} under {state_root}.") from None
        except (ValueError, TypeError):
            raise FleetError(
                f"The site record {path} is damaged; remove it with `edge-deploy site down --purge`."
            ) from None


def write_config(site: Site, credentials: UpstreamCredentials | None = None) -> Path:
    """The registry's config (mode 0600): filesystem storage, the access log on, expvar/Prometheus on a
    loopback debug port, and ``proxy.remoteurl`` (with the upstream's login, if any) when it is a cache."""
    import yaml

    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(Path(site.state_dir) / "storage")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {
            "addr": site.listen,
            "debug": {
                "addr": f"127.0.0.1:{site.debug_port}",
                "prometheus": {"enabled": True, "path": "/metrics"},
            },
        },
    }
    if site.upstream:
        config["proxy"] = {"remoteurl": site.upstream}
        if credentials is not None:
            config["proxy"].update(username=credentials.username, password=credentials.password)
    text = "# Written by edge-deploy (fleet/site.py); edits are overwritten by the next `site up`.\n"
    text += yaml.safe_dump(config, sort_keys=False)
    # Owner-only from its first byte: it may hold the upstream's password.
    fd = os.open(site.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    return site.config


@dataclass(frozen=True)
class UpstreamCredentials:
    """A private upstream's login, which the cache presents for every pull it passes upstream."""

    username: str
    password: str = field(repr=False)


def check_credentials(
    upstream: str, username: str | None, password: str | None
) -> UpstreamCredentials | None:
    """Both or neither; plain text (HTTP basic auth allows no ``:`` in the user and no control characters);
    and never in clear text over the network: an ``http://`` upstream takes credentials only on loopback."""
    if username is None and password is None:
        return None
    if not username or password is None:
        raise FleetError("An upstream login needs both a user name and a password.")
    if len(username) > 255 or ":" in username or any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise FleetError(
            "The upstream user name must be 1-255 characters with no ':' and no control characters."
        )
    if not 0 < len(password) <= 1024 or any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise FleetError(
            "The upstream password must be 1-1024 characters with no control characters (newlines)."
        )
    parts = urlsplit(upstream)
    if parts.scheme != "https":
        try:
            loopback = ipaddress.ip_address((parts.hostname or "").strip("[]")).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise FleetError(
                f"The upstream {upstream} is plain http: its password would cross the network in clear text; "
                "use an https:// upstream."
            )
    return UpstreamCredentials(username, password)


def read_password_file(path: Path) -> str:
    """The password in ``path`` (one line; its line ending is not part of it). Not a command-line value,
    which every user on the host could read in the process list."""
    try:
        with path.open("rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise FleetError(
            f"The upstream password file {path} cannot be read ({exc.strerror or exc})."
        ) from None
    if len(data) > 4096:
        raise FleetError(f"The upstream password file {path} is larger than 4 KiB; it should hold one line.")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise FleetError(f"The upstream password file {path} is not UTF-8 text.") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _answering(listen: str) -> bool:
    import httpx

    try:
        return httpx.get(f"http://{listen}/v2/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def site_up(
    name: str,
    upstream: str | None,
    *,
    listen: str = DEFAULT_LISTEN,
    state_root: Path = DEFAULT_STATE_ROOT,
    allow_public: bool = False,
    upstream_username: str | None = None,
    upstream_password: str | None = None,
    timeout: float = 30,
) -> Site:
    """Start (or restart with a new config) the site's registry; ``upstream`` None makes a plain registry.
    A private upstream's login goes into the config only (0600), never into ``site.json`` or a command line."""
    check_name(name)
    check_listen(listen, allow_public=allow_public)
    credentials = None
    if upstream is not None:
        upstream = check_url(upstream, "upstream registry")
        credentials = check_credentials(upstream, upstream_username, upstream_password)
    elif upstream_username is not None or upstream_password is not None:
        raise FleetError("An upstream login needs an upstream registry.")
    binary = registry_binary()
    state = state_root / name
    existing: Site | None = None
    with contextlib.suppress(FleetError):
        existing = Site.load(name, state_root)
    if existing is not None:
        site_down(existing)
    state.mkdir(parents=True, exist_ok=True)
    debug_port = free_port(15050, set())
    site = Site(
        name=name,
        state_dir=str(state),
        listen=listen,
        upstream=upstream,
        debug_port=debug_port,
        upstream_username=credentials.username if credentials else None,
    )
    write_config(site, credentials)
    if _answering(listen):
        raise FleetError(f"Something already answers as a registry on {listen}; choose another --listen.")
    with open(site.log, "ab") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(site.config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    site.pid = proc.pid
    site.save()
    deadline = time.monotonic() + timeout
    while not _answering(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            site_down(site)
            tail = site.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise FleetError(f"The site registry {name} did not answer on {listen}: {tail[0][-200:]}")
        time.sleep(0.2)
    return site


def site_down(site: Site, *, purge: bool = False) -> None:
    """Stop the registry by its recorded PID; ``purge`` also deletes the cached blobs and the record."""
    terminate(site.pid, str(site.config), timeout=20)
    site.pid = None
    if Path(site.state_dir).is_dir():
        site.save()
    if purge:
        shutil.rmtree(site.state_dir, ignore_errors=True)


def proxy_stats(site: Site) -> dict[str, Any]:
    """The cache's own counters (expvar ``registry.proxy``): requests, hits, misses, bytes from upstream."""
    import httpx

    try:
        data = httpx.get(f"http://127.0.0.1:{site.debug_port}/debug/vars", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {}
    proxy = data.get("registry", {}).get("proxy", {})
    return proxy if isinstance(proxy, dict) else {}


def cached_bytes(site: Site) -> int:
    blobs = Path(site.state_dir) / "storage" / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("data") if p.is_file()) if blobs.is_dir() else 0


def site_status(site: Site) -> dict[str, Any]:
    return {
        "name": site.name,
        "listen": site.listen,
        "upstream": site.upstream,
        "upstream_username": site.upstream_username,
        "running": site.running,
        "answering": _answering(site.listen) if site.running else False,
        "pid": site.pid if site.running else None,
        "cached_bytes": cached_bytes(site),
        "proxy": proxy_stats(site) if site.running else {},
        "log": str(site.log),
    }


def list_sites(state_root: Path = DEFAULT_STATE_ROOT) -> list[Site]:
    sites = []
    for path in sorted(state_root.glob("*/site.json")):
        with contextlib.suppress(FleetError):
            sites.append(Site.load(path.parent.name, state_root))
    return sites


@dataclass
class Served:
    """What a registry served for one blob: full GETs and their bytes (HEADs and 307s carry none)."""

    gets: int = 0
    bytes: int = 0


def served_blobs(log: Path, offset: int = 0) -> dict[str, Served]:
    """Blob downloads in a registry's access log from byte ``offset`` on, by digest: how many times each
    layer went out and how many bytes, read from the registry itself rather than from the clients."""
    out: dict[str, Served] = {}
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return out
    for m in _ACCESS_RE.finditer(text):
        if m["method"] != "GET" or m["status"] not in ("200", "206") or m["bytes"] == "-":
            continue
        row = out.setdefault(m["digest"], Served())
        row.gets += 1
        row.bytes += int(m["bytes"])
    return out


def log_offset(site: Site) -> int:
    """Where the access log ends now; ``served_blobs(log, offset)`` then counts only what comes after."""
    try:
        return site.log.stat().st_size
    except FileNotFoundError:
        return 0
