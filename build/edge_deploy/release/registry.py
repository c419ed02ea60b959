"""The OCI registry, through its HTTP API (distribution spec): resolve tags, list tags, re-tag by digest.

Re-tagging PUTs the manifest bytes fetched by digest under the new tag, so the digest is unchanged and
nothing is pulled or rebuilt. Pushed bytes are measured as the blobs reachable from the new digests that
no tag of the same repository reached before the release (what the builder had to upload).

Credentials come from the environment or Docker's own config (``edge_deploy.release.credentials``) and
go only to the registry itself or to a token service over https (or on the registry's own host); 5xx and
429 answers and dropped connections are retried a bounded number of times with backoff.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt

from edge_deploy.release.credentials import Credentials, registry_credentials
from edge_deploy.release.manifest import ReleaseError

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
REGISTRY_ATTEMPTS = 5
RETRY_WAIT_S = 0.5  # the first backoff; it doubles per retry (0.5, 1, 2, 4 s) unless Retry-After says
RETRY_AFTER_MAX_S = 30.0
RETRY_STATUS = (429, 500, 502, 503, 504)


class RegistryError(ReleaseError):
    """The registry cannot be reached or refused a request."""


class ResponseTooLarge(RegistryError):
    """The registry answered more bytes than the caller reads (a broken or hostile registry)."""


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def split_repository(repository: str) -> tuple[str, str]:
    """``localhost:5000/edge-deploy/runtime`` → (``localhost:5000``, ``edge-deploy/runtime``)."""
    host, _, name = repository.partition("/")
    if not name or ("." not in host and ":" not in host and host != "localhost"):
        raise RegistryError(
            f"Repository {repository!r} does not name a registry host (e.g. localhost:5000/x/y)."
        )
    return host, name


def split_ref(ref: str) -> tuple[str, str]:
    """``repo@sha256:…`` or ``repo:tag`` → (repository, digest-or-tag)."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    head, _, last = ref.rpartition("/")
    if ":" in last:
        name, _, tag = last.partition(":")
        return f"{head}/{name}", tag
    return ref, "latest"


def _retryable(resp: httpx.Response) -> bool:
    return resp.status_code in RETRY_STATUS


class Registry:
    """One registry host. ``http`` for loopback hosts (the local registry), ``https`` elsewhere;
    credentials from ``EDGE_REGISTRY_USER`` / ``EDGE_REGISTRY_PASSWORD`` or Docker's config, read when the
    registry first asks for them. ``retries`` counts the requests sent again (5xx, 429, dropped links)."""

    def __init__(self, host: str, *, timeout: float = 30.0, client: httpx.Client | None = None) -> None:
        self.host = host
        loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
        self.base = f"{'http' if loopback else 'https'}://{host}/v2"
        self.client = client or httpx.Client(timeout=timeout)
        self.tokens: dict[str, str] = {}  # repository name ("" for /v2/ itself) → bearer token
        self.retries = 0
        self._creds: Credentials | None = None
        self._creds_read = False
        # Basic credentials go to registries that take them directly and to the token service of those
        # that answer with a Bearer challenge; they are kept for every token exchange, not only the first.
        self.basic: httpx.BasicAuth | None = None

    def credentials(self) -> Credentials | None:
        """Looked up once, when the registry first answers 401 (a credential helper may prompt or be slow)."""
        if not self._creds_read:
            self._creds = registry_credentials(self.host)
            self._creds_read = True
            if self._creds is not None and not self._creds.identity_token:
                self.basic = httpx.BasicAuth(self._creds.username, self._creds.secret)
        return self._creds

    def _send(self, method: str, url: str, *, max_bytes: int | None = None, **kw: Any) -> httpx.Response:
        """One HTTP request, sent again on 5xx / 429 answers and dropped connections: REGISTRY_ATTEMPTS at
        most, backoff doubling from RETRY_WAIT_S or what Retry-After asks (capped); each retry logged.
        ``max_bytes``: the answer's body is read no further (ResponseTooLarge)."""

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            if outcome is not None and not outcome.failed:
                after = outcome.result().headers.get("retry-after", "")
                if after.strip().isdigit():
                    return min(float(after), RETRY_AFTER_MAX_S)
            return float(min(RETRY_WAIT_S * 2 ** (state.attempt_number - 1), RETRY_AFTER_MAX_S))

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            outcome = state.outcome
            why = (
                type(outcome.exception()).__name__
                if outcome is not None and outcome.failed
                else f"HTTP {outcome.result().status_code}"
                if outcome is not None
                else "?"
            )
            log.warning(
                "Registry %s: %s %s gave %s; retrying in %.1f s (attempt %d of %d).",
                self.host,
                method,
                url.split("?")[0],
                why,
                state.next_action.sleep if state.next_action else 0.0,
                state.attempt_number + 1,
                REGISTRY_ATTEMPTS,
            )

        retrying = Retrying(
            stop=stop_after_attempt(REGISTRY_ATTEMPTS),
            wait=wait,
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(_retryable),
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        call = self.client.request if max_bytes is None else functools.partial(self._bounded, max_bytes)
        resp: httpx.Response = retrying(call, method, url, **kw)
        return resp

    def _bounded(self, max_bytes: int, method: str, url: str, **kw: Any) -> httpx.Response:
        """The answer read into memory up to ``max_bytes`` (decoded) and no further: a registry that sends
        more, or announces more, gets ResponseTooLarge before it can make the caller allocate it."""
        auth = kw.pop("auth", httpx.USE_CLIENT_DEFAULT)
        request = self.client.build_request(method, url, **kw)
        resp = self.client.send(request, auth=auth, stream=True)
        too_large = ResponseTooLarge(
            f"Registry {self.host} answered {method} {url.split('?')[0]} with more than {max_bytes} bytes."
        )
        try:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
        finally:
            resp.close()
        kept = [
            (k, v)
            for k, v in resp.headers.multi_items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        return httpx.Response(resp.status_code, headers=kept, content=bytes(body), request=request)

    def _check_realm(self, realm: str) -> None:
        """Credentials go to a token service over https, or on the registry's own host (a local registry
        over plain http); never in clear text to a host the challenge alone names."""
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = None
        own_host = httpx.URL(self.base).host
        if url is not None and (url.scheme == "https" or (url.scheme == "http" and url.host == own_host)):
            return
        raise RegistryError(
            f"Registry {self.host} sends its token requests to {realm}, which is neither https nor the "
            "registry's own host; refusing to send credentials there."
        )

    def _authenticate(self, resp: httpx.Response, repository: str) -> bool:
        """Answer a 401: Bearer token flow (distribution token auth: trade the credentials for a token of
        the scope the challenge names, one repository, pull or pull+push, kept for that repository), or
        Basic credentials for registries that take them directly. False when there is nothing to try."""
        challenge = resp.headers.get("www-authenticate", "")
        if challenge.lower().startswith("basic"):
            return self.basic is None and self.credentials() is not None and self.basic is not None
        if not challenge.lower().startswith("bearer "):
            return False
        # key="value" pairs; a scope's value has commas of its own ("repository:x:pull,push")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        self._check_realm(realm)
        creds = self.credentials()
        if creds is not None and creds.identity_token:  # OAuth2 refresh token (docker login's identitytoken)
            form = {
                **params,
                "grant_type": "refresh_token",
                "refresh_token": creds.secret,
                "client_id": "edge-deploy",
            }
            token_resp = self._send("POST", realm, data=form)
        else:
            token_resp = self._send("GET", realm, params=params, auth=self.basic)
        if token_resp.status_code != 200:
            return False
        try:
            body = token_resp.json()
        except ValueError:
            return False
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            return False
        self.tokens[repository] = token
        return True

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: Iterable[int] = (200,),
        max_bytes: int | None = None,
        **kw: Any,
    ) -> httpx.Response:
        parts = ("/manifests/", "/tags/", "/blobs/", "/referrers/")
        repository = next((path.split(m)[0] for m in parts if m in path), "")
        headers = dict(kw.pop("headers", None) or {})

        def send() -> httpx.Response:
            token = self.tokens.get(repository)
            if token is None:
                return self._send(
                    method, f"{self.base}/{path}", headers=headers, auth=self.basic, max_bytes=max_bytes, **kw
                )
            bearer = {**headers, "Authorization": f"Bearer {token}"}
            return self._send(method, f"{self.base}/{path}", headers=bearer, max_bytes=max_bytes, **kw)

        try:
            resp = send()
            if resp.status_code == 401 and self._authenticate(resp, repository):
                resp = send()  # a new token: the first for this repository, or one with push scope
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"Registry {self.host} is unreachable while {what} ({type(exc).__name__})."
            ) from None
        if resp.status_code not in tuple(ok):
            raise RegistryError(f"Registry {self.host} refused {what} (HTTP {resp.status_code}).")
        return resp

    def ping(self) -> None:
        self._request("GET", "", what="checking the API", ok=(200, 401))

    def manifest(self, name: str, reference: str, *, max_bytes: int | None = None) -> Manifest:
        """A manifest's bytes; ``max_bytes`` bounds what is read (ResponseTooLarge past it)."""
        resp = self._request(
            "GET",
            f"{name}/manifests/{reference}",
            what=f"fetching {name}:{reference}",
            ok=(200, 404),
            headers={"Accept": ACCEPT},
            max_bytes=max_bytes,
        )
        if resp.status_code == 404:
            raise RegistryError(f"Image {self.host}/{name}:{reference} does not exist in the registry.")
        media = resp.headers.get("content-type", "").split(";")[0]
        digest = resp.headers.get("docker-content-digest") or ""
        return Manifest(digest=digest, media_type=media, body=resp.content)

    def resolve(self, name: str, tag: str) -> str | None:
        """The digest a tag points to now, or None when the tag does not exist."""
        resp = self._request(
            "HEAD",
            f"{name}/manifests/{tag}",
            what=f"resolving {name}:{tag}",
            ok=(200, 404),
            headers={"Accept": ACCEPT},
        )
        if resp.status_code == 404:
            return None
        return resp.headers.get("docker-content-digest")

    def tags(self, name: str) -> list[str]:
        resp = self._request("GET", f"{name}/tags/list", what=f"listing tags of {name}", ok=(200, 404))
        if resp.status_code == 404:
            return []
        return sorted(resp.json().get("tags") or [])

    def repositories(self) -> list[str]:
        """Every repository, through the catalog's pages (distribution refuses pages above 1000: HTTP 400)."""
        out: list[str] = []
        path: str | None = "_catalog?n=1000"
        while path:
            resp = self._request("GET", path, what="listing repositories")
            out += resp.json().get("repositories") or []
            nxt = resp.links.get("next", {}).get("url", "")
            path = nxt.split("/v2/", 1)[1] if "/v2/" in nxt else None
        return sorted(out)

    def tag(self, name: str, digest: str, tag: str) -> None:
        """Point ``tag`` at ``digest`` by re-putting the same manifest bytes (digest unchanged)."""
        m = self.manifest(name, digest)
        self._request(
            "PUT",
            f"{name}/manifests/{tag}",
            what=f"tagging {name}@{digest} as {tag}",
            ok=(201, 200),
            content=m.body,
            headers={"Content-Type": m.media_type},
        )

    def blobs(self, name: str, reference: str) -> dict[str, int]:
        """Every blob (layers, configs) reachable from a manifest or index → size in bytes."""
        out: dict[str, int] = {}
        self._walk(name, reference, out, set())
        return out

    def _walk(self, name: str, reference: str, out: dict[str, int], seen: set[str]) -> None:
        if reference in seen:
            return
        seen.add(reference)
        try:
            doc = self.manifest(name, reference).json
        except RegistryError as exc:
            if "does not exist" in str(exc):
                return
            raise
        for child in doc.get("manifests") or []:
            self._walk(name, child["digest"], out, seen)
        for blob in [doc.get("config") or {}, *(doc.get("layers") or [])]:
            if blob.get("digest"):
                out[blob["digest"]] = int(blob.get("size", 0))

    def repository_blobs(self, name: str) -> set[str]:
        """Blobs reachable from any tag of repository ``name``. A builder uploads every blob the target
        repository lacks (blob existence is checked per repository), so this is the "before" of a push."""
        found: dict[str, int] = {}
        seen: set[str] = set()
        for tag in self.tags(name):
            self._walk(name, tag, found, seen)
        return set(found)


def pushed_bytes(before: set[str], new: dict[str, int]) -> int:
    """Bytes of blobs in ``new`` that the registry did not hold before."""
    return sum(size for digest, size in new.items() if digest not in before)
