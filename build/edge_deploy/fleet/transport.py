"""The ``ssh-copy`` image transport: a robot with no registry gets its image from the operator host over
the SSH connection the deploy already holds, and only the layers it lacks travel.

How: the host keeps the image in a content-addressed store (an OCI image layout: ``blobs/sha256/<hex>``,
filled by the build's OCI output or copied once from the release's registry). For one pull, a read-only
registry (the Distribution API's GET/HEAD of manifests and blobs, by digest only) serves that store on the
host's 127.0.0.1, and an SSH *reverse* forward makes it reachable on the robot's own loopback, where Docker
allows a plain-HTTP registry. The robot's engine then runs the same ``docker pull repository@sha256:…`` as
with a registry: it asks for the blobs it does not have, nothing else. The bytes served are counted and
reported. The image is then named on the robot as the release records it (``repository@sha256:…``), so
compose, rollback, drift and prune see no difference between the two transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from edge_deploy.fleet import FleetError

if TYPE_CHECKING:
    from edge_deploy.fleet.ssh import RobotConnection

log = logging.getLogger(__name__)

Transport = Literal["registry", "ssh-copy"]
TRANSPORTS: tuple[Transport, ...] = ("registry", "ssh-copy")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
CHUNK = 1 << 20


def check_transport(value: str) -> Transport:
    """``value`` as a transport name, or one sentence naming the choices."""
    if value not in TRANSPORTS:
        raise FleetError(
            f"Unknown image transport {value!r}; use one of {', '.join(TRANSPORTS)}.", option="transport"
        )
    return cast(Transport, value)


def split_digest_ref(ref: str) -> tuple[str, str, str]:
    """``domain/path@sha256:…`` → (repository, path without the domain, digest); a reference without a
    digest is one sentence (the transport serves by digest only)."""
    repository, sep, digest = ref.partition("@")
    if not sep or not DIGEST.match(digest) or not repository:
        raise FleetError(
            f"Image {ref!r} is not pinned by digest (repository@sha256:<64 hex>); ssh-copy needs one."
        )
    first, slash, rest = repository.partition("/")
    has_domain = slash and ("." in first or ":" in first or first == "localhost")
    return repository, rest if has_domain else repository, digest


def default_store() -> Path:
    """The host's image store when none is named: ``image-store`` in the tool's work directory."""
    from edge_deploy.images.files import work_dir

    return work_dir() / "image-store"


def prepare_store(ref: str, platforms: set[str], store: Path | None) -> int:
    """Before any robot is touched: make the host's store hold ``ref`` for each robot platform, copying
    what it lacks from the release's registry (the operator host reaches it; the robots need not).
    Returns the bytes downloaded (0 when the store already had everything)."""
    st = ImageStore(store or default_store())
    _, _, digest = split_digest_ref(ref)
    got = 0
    for platform in sorted(platforms):
        if st.missing(digest, platform):
            got += st.fill_from_registry(ref, platform)
    return got


def rollback_transport(ref: str, platforms: set[str], chosen: str | None, store: Path | None) -> Transport:
    """How a rollback deploys a release a robot no longer keeps: the operator's ``chosen`` transport, else
    ``ssh-copy`` when the host's store holds ``ref`` for every platform (no registry needed, only the
    missing layers travel), else ``registry``."""
    if chosen is not None:
        return check_transport(chosen)
    try:
        _, _, digest = split_digest_ref(ref)
        st = ImageStore(store or default_store())
        held = all(not st.missing(digest, p) for p in platforms)
    except (FleetError, OSError, ValueError, KeyError, TypeError):  # an unreadable store holds nothing
        held = False
    return "ssh-copy" if held and platforms else "registry"


@dataclass
class ImageStore:
    """The operator host's content-addressed image store (an OCI image layout): what ssh-copy serves."""

    root: Path

    def blob(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise FleetError(f"{digest!r} is not a sha256 digest.")
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.blob(digest).is_file()

    def put(self, data: bytes, digest: str) -> None:
        """Store ``data`` under ``digest`` after checking it (a corrupted download never enters the store)."""
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise FleetError(f"Blob {digest} arrived with content {got}; refusing it.")
        path = self.blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_bytes(data)
        tmp.replace(path)

    def add_layout(self, layout: Path) -> str:
        """Take the blobs of an OCI image layout (a build's ``type=oci,tar=false`` output) into the store,
        hard-linked where the filesystem allows; returns the digest its index.json names."""
        try:
            index = json.loads((layout / "index.json").read_text())
            digest = str(index["manifests"][0]["digest"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            raise FleetError(f"{layout} is not an OCI image layout (no readable index.json).") from None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
        for src in (layout / "blobs" / "sha256").iterdir():
            dest = self.blob(f"sha256:{src.name}")
            if dest.is_file():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        return digest

    def manifest(self, digest: str) -> tuple[bytes, str]:
        """A manifest or index of the store and its media type."""
        data = self.blob(digest).read_bytes()
        return data, media_type(data)

    def closure(self, digest: str, platform: str) -> Iterator[tuple[str, str]]:
        """(digest, "manifest"|"blob") of everything a pull of ``digest`` for ``platform`` reads."""
        data, media = self.manifest(digest)
        yield digest, "manifest"
        doc = json.loads(data)
        if media in INDEX_TYPES:
            for m in chosen(doc, platform):
                yield from self.closure(str(m["digest"]), platform)
            return
        yield str(doc["config"]["digest"]), "blob"
        for layer in doc.get("layers", []):
            yield str(layer["digest"]), "blob"

    def missing(self, digest: str, platform: str) -> list[str]:
        """What the store lacks to serve a pull of ``digest`` for ``platform`` (empty: it can)."""
        if not self.has(digest):
            return [digest]
        try:
            return [d for d, _ in self.closure(digest, platform) if not self.has(d)]
        except FileNotFoundError as exc:
            return [f"sha256:{Path(str(exc.filename)).name}"]

    def fill_from_registry(self, ref: str, platform: str) -> int:
        """Copy what the store lacks of ``ref`` (for ``platform``) from its registry, once; later rollouts
        find it here. Returns the bytes downloaded."""
        from edge_deploy.release.registry import Registry, RegistryError, split_repository

        repository, _, digest = split_digest_ref(ref)
        host, name = split_repository(repository)
        reg = Registry(host)
        got = 0
        try:
            if not self.has(digest):
                m = reg.manifest(name, digest)
                self.put(m.body, digest)
                got += len(m.body)
            for d, kind in list(self._walk_fetching(reg, name, digest, platform)):
                if self.has(d):
                    continue
                if kind == "manifest":
                    body = reg.manifest(name, d).body
                else:
                    body = reg._request(  # the client's auth and retries, one blob
                        "GET", f"{name}/blobs/{d}", what=f"downloading {d[:19]}", follow_redirects=True
                    ).content
                self.put(body, d)
                got += len(body)
        except RegistryError as exc:
            raise FleetError(f"Copying {ref} to the host's image store failed: {exc}") from None
        return got

    def _walk_fetching(self, reg: Any, name: str, digest: str, platform: str) -> Iterator[tuple[str, str]]:
        """``closure``, fetching each manifest before reading it (children of an index arrive on the way)."""
        data, media = self.manifest(digest)
        doc = json.loads(data)
        if media in INDEX_TYPES:
            for m in chosen(doc, platform):
                d = str(m["digest"])
                if not self.has(d):
                    self.put(reg.manifest(name, d).body, d)
                yield d, "manifest"
                yield from self._walk_fetching(reg, name, d, platform)
            return
        yield str(doc["config"]["digest"]), "blob"
        for layer in doc.get("layers", []):
            yield str(layer["digest"]), "blob"


def media_type(data: bytes) -> str:
    """A manifest's media type from its own JSON (OCI and Docker manifests carry ``mediaType``)."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise FleetError("A stored manifest is not JSON.") from None
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    return INDEX_TYPES[0] if "manifests" in doc else "application/vnd.oci.image.manifest.v1+json"


def chosen(index: dict[str, Any], platform: str) -> list[dict[str, Any]]:
    """The entries of an index a pull for ``platform`` reads (attestations and other platforms are not)."""
    os_name, _, arch = platform.partition("/")
    out = [
        m
        for m in index.get("manifests", [])
        if (m.get("platform") or {}).get("os") == os_name
        and (m.get("platform") or {}).get("architecture") == arch
    ]
    if not out:
        raise FleetError(f"The image has no {platform} variant; the robot cannot run it.")
    return out


@dataclass
class Served:
    """Bytes one registry served (manifests and blobs), and which blobs."""

    bytes: int = 0
    blobs: list[str] = field(default_factory=list)


def registry_app(store: ImageStore, served: Served) -> Any:
    """A read-only registry over ``store``: pulls by digest only (tags are not served)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    def unknown(code: str) -> Response:
        return Response(json.dumps({"errors": [{"code": code}]}), 404, media_type="application/json")

    async def base(_: Request) -> Response:
        return Response(
            "{}", media_type="application/json", headers={"Docker-Distribution-API-Version": "registry/2.0"}
        )

    async def manifests(request: Request) -> Response:
        digest = request.path_params["ref"]
        if not DIGEST.match(digest) or not store.has(digest):
            return unknown("MANIFEST_UNKNOWN")
        data, media = store.manifest(digest)
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return Response(b"", media_type=media, headers=headers)
        served.bytes += len(data)
        return Response(data, media_type=media, headers={"Docker-Content-Digest": digest})

    async def blobs(request: Request) -> Response:
        digest = request.path_params["digest"]
        if not DIGEST.match(digest) or not store.has(digest):
            return unknown("BLOB_UNKNOWN")
        path = store.blob(digest)
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(path.stat().st_size)}
        if request.method == "HEAD":
            return Response(b"", media_type="application/octet-stream", headers=headers)
        served.blobs.append(digest)

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    served.bytes += len(chunk)
                    yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)

    return Starlette(
        routes=[
            Route("/v2/", base, methods=["GET", "HEAD"]),
            Route("/v2/{name:path}/manifests/{ref}", manifests, methods=["GET", "HEAD"]),
            Route("/v2/{name:path}/blobs/{digest}", blobs, methods=["GET", "HEAD"]),
        ]
    )


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal capture: several robots' registries run at once inside the operator's
        process, and each would take SIGINT over and hand it back out of order (Ctrl-C must stay the
        tool's)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


@contextlib.asynccontextmanager
async def serving(store: ImageStore, served: Served) -> AsyncIterator[int]:
    """The read-only registry on a free port of the host's 127.0.0.1 for the length of the block."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server_class = _server_class()
    config = uvicorn.Config(registry_app(store, served), log_level="error", lifespan="off", access_log=False)
    server = server_class(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise FleetError("The host's image registry for ssh-copy did not start.")
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


async def copy_image(conn: RobotConnection, image: str, store: ImageStore, platform: str) -> int:
    """Pull ``image`` onto the robot from the host's ``store`` through a reverse SSH forward; returns the
    bytes served (what the robot lacked). The image is then named ``image`` on the robot."""
    import asyncssh

    from edge_deploy.fleet.ssh import q

    repository, path, digest = split_digest_ref(image)
    lacking = store.missing(digest, platform)
    if lacking:
        raise FleetError(
            f"The host's image store ({store.root}) lacks {lacking[0]} of {image}; build the image for this "
            "robot first (or copy it from its registry)."
        )
    served = Served()
    async with serving(store, served) as port:
        try:
            listener = await conn.conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", port)
        except (OSError, asyncssh.Error) as exc:
            raise FleetError(
                f"Robot {conn.robot.name}: its sshd refused a reverse port forward ({exc}); ssh-copy needs "
                "`AllowTcpForwarding yes` (or `remote`) in the robot's sshd_config."
            ) from None
        try:
            remote = f"127.0.0.1:{listener.get_port()}/{path}@{digest}"
            tag = f"{repository}:edge-{digest.split(':', 1)[1][:12]}"
            r = await conn.run(
                f"docker pull -q --platform {q(platform)} {q(remote)} >/dev/null && "
                f"docker tag {q(remote)} {q(tag)} && {{ docker image rm {q(remote)} >/dev/null 2>&1 || true; }}",
                timeout=1800,
            )
        finally:
            listener.close()
            with contextlib.suppress(Exception):
                await listener.wait_closed()
    if not r.ok:
        raise FleetError(
            f"Robot {conn.robot.name}: pulling {image} from the host over SSH failed: {r.tail(200)}"
        )
    log.info(
        "Robot %s: %s copied over SSH, %d bytes (%d blobs).",
        conn.robot.name,
        image,
        served.bytes,
        len(served.blobs),
    )
    return served.bytes
