"""Registry credentials from Docker's own configuration, as ``docker login`` leaves them: ``credHelpers``
and ``credsStore`` (a real ``docker-credential-<name>`` executable on PATH, written by the test, speaking
Docker's credential-helper protocol), ``auths`` entries, and the environment, which wins over all of them.
The registry is the token-auth transport of test_registry_auth.py; the client is real."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest

from edge_deploy.release.registry import Registry, RegistryError
from tests.build.test_registry_auth import DIGEST, PASSWORD, USER, TokenRegistry

HELPER = """#!/bin/sh
# docker-credential-edgetest: Docker's credential-helper protocol (`get`: server on stdin, JSON on stdout).
[ "$1" = get ] || {{ echo "unsupported action $1" >&2; exit 1; }}
read -r server
echo "$server" >> "{log}"
case "$server" in
  reg.example|https://reg.example) printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\\n' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$DOCKER_CONFIG``, a helper ``docker-credential-edgetest`` on PATH, no credentials in the
    environment."""
    monkeypatch.delenv("EDGE_REGISTRY_USER", raising=False)
    monkeypatch.delenv("EDGE_REGISTRY_PASSWORD", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-edgetest"
    helper.write_text(HELPER.format(log=tmp_path / "helper.log", user=USER, secret=PASSWORD))
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = tmp_path / "docker"
    cfg.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    return cfg


def helper_calls(docker_config: Path) -> list[str]:
    log = docker_config.parent / "helper.log"
    return log.read_text().split() if log.exists() else []


def pull_and_push(app: TokenRegistry) -> None:
    reg = Registry("reg.example", client=httpx.Client(transport=httpx.MockTransport(app)))
    assert reg.resolve("team/runtime", DIGEST) == DIGEST
    reg.tag("team/runtime", DIGEST, "0.1.0")


@pytest.mark.parametrize(
    "config",
    [
        {"credHelpers": {"reg.example": "edgetest"}},
        {"credsStore": "edgetest", "auths": {"reg.example": {}}},
        {"credsStore": "desktop-absent", "credHelpers": {"reg.example": "edgetest"}},  # credHelpers first
    ],
    ids=["credHelpers", "credsStore", "credHelpers-over-credsStore"],
)
def test_credential_helpers_feed_every_token_exchange(docker_config: Path, config: dict) -> None:
    (docker_config / "config.json").write_text(json.dumps(config))
    app = TokenRegistry()
    pull_and_push(app)
    assert [scope for scope, _ in app.token_requests] == [
        "repository:team/runtime:pull",
        "repository:team/runtime:pull,push",
    ]
    assert all(ok for _, ok in app.token_requests), "a token was asked for without the helper's credentials"
    assert helper_calls(docker_config) == ["reg.example"]  # asked once, when the registry first wanted them


@pytest.mark.parametrize("key", ["reg.example", "https://reg.example", "https://reg.example/v2/"])
def test_auths_entries_as_docker_login_writes_them(docker_config: Path, key: str) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {key: {"auth": auth}}}))
    app = TokenRegistry()
    pull_and_push(app)
    assert app.token_requests and all(ok for _, ok in app.token_requests)


def test_the_environment_wins_over_docker_config(
    docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGE_REGISTRY_PASSWORD", PASSWORD)
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {"reg.example": "edgetest"}}))
    app = TokenRegistry()
    pull_and_push(app)
    assert all(ok for _, ok in app.token_requests) and helper_calls(docker_config) == []


def test_a_helper_that_knows_no_credentials_leaves_the_request_anonymous(docker_config: Path) -> None:
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {"other.example": "edgetest"}}))
    reg = Registry("other.example", client=httpx.Client(transport=httpx.MockTransport(TokenRegistry())))
    with pytest.raises(RegistryError, match=r"refused resolving team/runtime:0\.1\.0 \(HTTP 401\)"):
        reg.resolve("team/runtime", "0.1.0")
    assert helper_calls(docker_config) == ["other.example"]


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"credHelpers": {"reg.example": "absent"}}, "docker-credential-absent"),
        ("{not json", "config.json"),
        ({"auths": {"reg.example": {"auth": "%%%"}}}, "config.json"),
    ],
)
def test_broken_docker_config_is_one_sentence(docker_config: Path, config: object, says: str) -> None:
    from edge_deploy.release.credentials import CredentialsError

    text = config if isinstance(config, str) else json.dumps(config)
    (docker_config / "config.json").write_text(text)
    reg = Registry("reg.example", client=httpx.Client(transport=httpx.MockTransport(TokenRegistry())))
    with pytest.raises(CredentialsError) as info:  # a ReleaseError: `error: …` and exit 2 in the CLI
        reg.resolve("team/runtime", "0.1.0")
    msg = str(info.value)
    assert says in msg and "\n" not in msg and msg.endswith("."), msg


class RefreshTokenRegistry(TokenRegistry):
    """The token service also takes an OAuth2 refresh token (``POST`` with grant_type=refresh_token), what
    ``docker login`` stores as ``identitytoken`` for registries such as ACR."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and str(request.url).startswith(self.realm):
            form = dict(httpx.QueryParams(request.content.decode()))
            ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") == "refresh-abc"
            self.token_requests.append((form.get("scope", ""), ok))
            return (
                httpx.Response(200, json={"access_token": f"tok|{form.get('scope', '')}"})
                if ok
                else httpx.Response(401)
            )
        return super().__call__(request)


def test_an_identity_token_is_traded_as_a_refresh_token(docker_config: Path) -> None:
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {"reg.example": {"auth": "", "identitytoken": "refresh-abc"}}})
    )
    app = RefreshTokenRegistry()
    pull_and_push(app)
    assert [s for s, _ in app.token_requests] == [
        "repository:team/runtime:pull",
        "repository:team/runtime:pull,push",
    ]
    assert all(ok for _, ok in app.token_requests)
