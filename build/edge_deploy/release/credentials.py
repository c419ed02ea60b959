"""Registry credentials where people already keep them: ``EDGE_REGISTRY_USER`` / ``EDGE_REGISTRY_PASSWORD``
(CI secrets; they win), else Docker's own configuration as ``docker login`` leaves it
(``$DOCKER_CONFIG/config.json``, default ``~/.docker/config.json``): ``credHelpers[host]``, then
``credsStore`` (both run ``docker-credential-<name> get``, Docker's credential-helper protocol), then the
``auths[host]`` entry (base64 ``user:password``, or an ``identitytoken``). No credentials is not an error:
the registry may allow anonymous pulls.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_deploy.release.manifest import ReleaseError

log = logging.getLogger(__name__)

HELPER_TIMEOUT_S = 30
IDENTITY_TOKEN_USER = "<token>"  # Docker's marker: the secret is an OAuth2 refresh token
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker login uses for Docker Hub


class CredentialsError(ReleaseError):
    """Docker's configuration or a credential helper cannot give the credentials it promises."""


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str
    source: str  # where they came from, for log lines (never the secret)

    @property
    def identity_token(self) -> bool:
        """The secret is an identity (refresh) token for the token service, not a password."""
        return self.username == IDENTITY_TOKEN_USER


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _server_key(key: str) -> str:
    """``https://reg.example/v2/`` → ``reg.example``: how Docker matches config keys to a registry."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in DOCKER_HUB else host


def _lookup(table: Any, host: str) -> Any:
    if not isinstance(table, dict):
        return None
    want = _server_key(host)
    return next((v for k, v in table.items() if isinstance(k, str) and _server_key(k) == want), None)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise CredentialsError(f"Docker's config {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise CredentialsError(f"Docker's config {path} cannot be read ({exc.strerror}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(
            f"Docker's config {path} is not valid JSON (line {exc.lineno}: {exc.msg})."
        ) from None
    if not isinstance(data, dict):
        raise CredentialsError(f"Docker's config {path} is not a JSON object.")
    return data


def from_helper(name: str, host: str, config: Path) -> Credentials | None:
    """``docker-credential-<name> get`` with the server on stdin, as Docker runs it; None when the helper
    holds nothing for that server."""
    exe_name = f"docker-credential-{name}"
    exe = shutil.which(exe_name)
    if exe is None:
        raise CredentialsError(
            f"Docker's config {config} names the credential helper {exe_name} for {host}, but it is not on PATH."
        )
    server = DOCKER_HUB_SERVER if _server_key(host) == "docker.io" else host
    try:
        proc = subprocess.run(
            [exe, "get"], input=server, text=True, capture_output=True, timeout=HELPER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"{exe_name} did not answer within {HELPER_TIMEOUT_S} s.") from None
    except OSError as exc:
        raise CredentialsError(f"{exe_name} cannot be run ({exc.strerror or exc}).") from None
    said = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        if "credentials not found" in said.lower():
            return None
        last = said.splitlines()[-1] if said else f"exit {proc.returncode}"
        raise CredentialsError(f"{exe_name} could not give credentials for {host}: {last.rstrip('.')}.")
    try:
        answer = json.loads(proc.stdout)
        user, secret = answer["Username"], answer["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"{exe_name} answered something other than Username/Secret JSON.") from None
    return Credentials(user, secret, exe_name)


def from_auths(entry: Any, host: str, config: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return Credentials(IDENTITY_TOKEN_USER, entry["identitytoken"], f"{config} auths")
    auth = entry.get("auth")
    if not auth:
        return None
    try:
        user, sep, password = base64.b64decode(str(auth), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, sep, password = "", "", ""
    if not sep or not user:
        raise CredentialsError(
            f"Docker's config {config} has an 'auth' for {host} that is not base64 of user:password."
        )
    return Credentials(user, password, f"{config} auths")


def registry_credentials(host: str) -> Credentials | None:
    """Credentials for registry ``host`` (``reg.example``, ``localhost:5000``), or None."""
    user, password = os.environ.get("EDGE_REGISTRY_USER"), os.environ.get("EDGE_REGISTRY_PASSWORD")
    if user and password:
        return Credentials(user, password, "EDGE_REGISTRY_USER/EDGE_REGISTRY_PASSWORD")
    path = docker_config_path()
    config = _read_config(path)
    helper = _lookup(config.get("credHelpers"), host) or config.get("credsStore")
    if helper:
        if not isinstance(helper, str):
            raise CredentialsError(f"Docker's config {path} names a credential helper that is not a name.")
        creds = from_helper(helper, host, path)
    else:
        creds = from_auths(_lookup(config.get("auths"), host), host, path)
    if creds is not None:
        log.info("Registry %s: credentials from %s.", host, creds.source)
    return creds
