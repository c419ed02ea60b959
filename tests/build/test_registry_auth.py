"""The registry client against a registry that uses token auth (what Docker Hub, GHCR and NGC do): every
repository and every push asks for a token of its own scope, and each token request must carry the CI's
credentials. The registry and its token service are an in-process httpx transport; the client is real."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from edge_deploy.release.registry import Registry, RegistryError

USER, PASSWORD = "ci-bot", "s3cret"
REALM = "https://auth.example/token"
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
).encode()
DIGEST = "sha256:" + "a" * 64


class TokenRegistry:
    """Manifests under any repository; pull needs a ``repository:NAME:pull`` token, push a ``…:pull,push``
    one; tokens come from REALM for basic credentials only."""

    def __init__(self, realm: str = REALM) -> None:
        self.realm = realm
        self.tags: dict[tuple[str, str], bytes] = {}
        self.token_requests: list[tuple[str, bool]] = []  # (scope, had valid credentials)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(self.realm):
            scope = request.url.params.get("scope", "")
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            ok = request.headers.get("authorization") == good
            self.token_requests.append((scope, ok))
            return httpx.Response(200, json={"token": f"tok|{scope}"}) if ok else httpx.Response(401)
        path = request.url.path.removeprefix("/v2/")
        if not path:
            return httpx.Response(
                401, headers={"www-authenticate": f'Bearer realm="{self.realm}",service="reg"'}
            )
        name, _, ref = path.partition("/manifests/")
        actions = "pull,push" if request.method == "PUT" else "pull"
        scope = f"repository:{name}:{actions}"
        token = request.headers.get("authorization", "").removeprefix("Bearer ").removeprefix("tok|")
        if token not in (scope, f"repository:{name}:pull,push"):
            challenge = f'Bearer realm="{self.realm}",service="reg",scope="{scope}"'
            return httpx.Response(401, headers={"www-authenticate": challenge})
        if request.method == "PUT":
            self.tags[(name, ref)] = request.content
            return httpx.Response(201)
        if ref == DIGEST or (name, ref) in self.tags:
            headers = {
                "content-type": "application/vnd.oci.image.manifest.v1+json",
                "docker-content-digest": DIGEST,
            }
            return httpx.Response(200, content=MANIFEST if request.method == "GET" else b"", headers=headers)
        return httpx.Response(404)


def test_tokens_per_repository_and_push_keep_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGE_REGISTRY_PASSWORD", PASSWORD)
    fake = TokenRegistry()
    reg = Registry("reg.example", client=httpx.Client(transport=httpx.MockTransport(fake)))
    for name in ("team/runtime", "team/converter"):  # two repositories, each pulled then pushed
        assert reg.resolve(name, DIGEST) == DIGEST
        reg.tag(name, DIGEST, "0.1.0")
        assert reg.resolve(name, "0.1.0") == DIGEST
    assert set(fake.tags) == {("team/runtime", "0.1.0"), ("team/converter", "0.1.0")}
    assert [scope for scope, _ in fake.token_requests] == [
        "repository:team/runtime:pull",
        "repository:team/runtime:pull,push",
        "repository:team/converter:pull",
        "repository:team/converter:pull,push",
    ]
    assert all(ok for _, ok in fake.token_requests), "a token was asked for without the credentials"


def test_wrong_credentials_are_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGE_REGISTRY_PASSWORD", "wrong")
    reg = Registry("reg.example", client=httpx.Client(transport=httpx.MockTransport(TokenRegistry())))
    with pytest.raises(
        RegistryError, match=r"Registry reg.example refused resolving team/runtime:0.1.0 \(HTTP 401\)"
    ):
        reg.resolve("team/runtime", "0.1.0")
