"""The registry client's defences: credentials go only to a token service on the registry's own host or
over https, and 5xx / 429 answers and dropped connections are retried a bounded number of times."""

from __future__ import annotations

import httpx
import pytest

import edge_deploy.release.registry as registry_mod
from edge_deploy.release.registry import Registry, RegistryError
from tests.build.test_registry_auth import DIGEST, PASSWORD, USER, TokenRegistry


@pytest.fixture(autouse=True)
def creds_and_no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGE_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setattr(registry_mod, "RETRY_WAIT_S", 0.0, raising=False)


class Recording:
    """Every request the client sends, by URL, before the fake registry answers it."""

    def __init__(self, app: TokenRegistry) -> None:
        self.app = app
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return self.app(request)


def client(handler: object) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "realm",
    [
        "http://auth.elsewhere.example/token",
        "http://reg.example.attacker.example/token",
        "ftp://reg.example/t",
    ],
)
def test_credentials_never_go_to_a_plain_http_realm_on_another_host(realm: str) -> None:
    rec = Recording(TokenRegistry(realm))
    reg = Registry("reg.example", client=client(rec))
    with pytest.raises(RegistryError) as info:
        reg.resolve("team/runtime", DIGEST)
    msg = str(info.value)
    assert "\n" not in msg and realm in msg and "refus" in msg.lower(), msg
    assert not [u for u in rec.urls if u.startswith(realm)], "the credentials were sent to the realm"


@pytest.mark.parametrize(
    ("host", "realm"),
    [
        ("reg.example", "https://auth.example/token"),  # another host, over https
        ("localhost:5000", "http://localhost:5000/token"),  # the registry's own host, plain http
        ("localhost:5000", "http://localhost:5001/auth"),  # the registry's own host, its token port
    ],
)
def test_https_realms_and_the_registrys_own_host_are_accepted(host: str, realm: str) -> None:
    app = TokenRegistry(realm)
    reg = Registry(host, client=client(app))
    assert reg.resolve("team/runtime", DIGEST) == DIGEST
    assert app.token_requests and all(ok for _, ok in app.token_requests)


class Flaky:
    """Answers ``codes`` in turn (then 200 with the manifest), counting requests."""

    def __init__(self, *codes: int | type[Exception]) -> None:
        self.codes = list(codes)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.codes:
            code = self.codes.pop(0)
            if not isinstance(code, int):
                raise code("connection reset by peer")
            headers = {"retry-after": "0"} if code == 429 else {}
            return httpx.Response(code, headers=headers)
        return httpx.Response(200, headers={"docker-content-digest": DIGEST})


def test_5xx_429_and_dropped_connections_are_retried_and_counted() -> None:
    flaky = Flaky(503, 429, httpx.ReadError, 502)
    reg = Registry("reg.example", client=client(flaky))
    assert reg.resolve("team/runtime", "0.1.0") == DIGEST
    assert flaky.requests == 5 and reg.retries == 4


def test_retries_are_bounded_and_end_in_one_sentence() -> None:
    flaky = Flaky(*[500] * 50)
    reg = Registry("reg.example", client=client(flaky))
    with pytest.raises(RegistryError, match=r"refused resolving team/runtime:0\.1\.0 \(HTTP 500\)"):
        reg.resolve("team/runtime", "0.1.0")
    assert flaky.requests == registry_mod.REGISTRY_ATTEMPTS and reg.retries == flaky.requests - 1


def test_client_errors_are_not_retried() -> None:
    flaky = Flaky(403)
    reg = Registry("reg.example", client=client(flaky))
    with pytest.raises(RegistryError, match=r"HTTP 403"):
        reg.resolve("team/runtime", "0.1.0")
    assert flaky.requests == 1 and reg.retries == 0


def test_the_catalog_is_read_page_by_page() -> None:
    """distribution answers 400 to a page above 1000 and links the next page in a Link header."""
    names = [f"team/r{i:04d}" for i in range(1500)]

    def catalog(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("n", "100"))
        if n > 1000:
            return httpx.Response(400, json={"errors": [{"code": "PAGINATION_NUMBER_INVALID"}]})
        last = request.url.params.get("last")
        start = names.index(last) + 1 if last else 0
        page = names[start : start + n]
        headers = {}
        if start + n < len(names):
            headers["link"] = f'</v2/_catalog?last={page[-1]}&n={n}>; rel="next"'
        return httpx.Response(200, json={"repositories": page}, headers=headers)

    reg = Registry("reg.example", client=client(catalog))
    assert reg.repositories() == names
