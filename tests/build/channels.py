"""Real registry helpers for the channel and agent tests: tiny multi-platform images pushed through the
registry's HTTP API (an index over one image manifest, no layers), signed with real cosign keys."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import httpx

from edge_deploy.release.manifest import ReleaseImage, ReleaseManifest
from tests.support import need, need_tool

REGISTRY = os.environ.get("EDGE_REGISTRY_ADDR", "127.0.0.1:5000")
PASSWORD = "channel-test"
INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE = "application/vnd.oci.image.manifest.v1+json"


def registry_up() -> bool:
    try:
        return httpx.get(f"http://{REGISTRY}/v2/", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def need_registry_and_cosign() -> None:
    need_tool("cosign")
    need(registry_up(), f"a registry on {REGISTRY} (scripts/host-setup)")


def _put_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"http://{REGISTRY}/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    loc = start.headers["location"]
    loc = loc if loc.startswith("http") else f"http://{REGISTRY}{loc}"
    client.put(f"{loc}{'&' if '?' in loc else '?'}digest={digest}", content=data).raise_for_status()
    return digest


def _put_manifest(client: httpx.Client, repo: str, ref: str, doc: dict[str, object], media: str) -> str:
    body = json.dumps(doc).encode()
    client.put(
        f"http://{REGISTRY}/v2/{repo}/manifests/{ref}", content=body, headers={"content-type": media}
    ).raise_for_status()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_image(repo: str, platform: str = "linux/arm64") -> ReleaseImage:
    """An index over one ``platform`` image (config only, a fresh nonce), tagged; as a release records it."""
    os_, arch = platform.split("/")
    with httpx.Client(timeout=10) as client:
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_,
                "rootfs": {"type": "layers", "diff_ids": []},
                "config": {"Labels": {"nonce": secrets.token_hex(8)}},
            }
        ).encode()
        cdigest = _put_blob(client, repo, config)
        image = {
            "schemaVersion": 2,
            "mediaType": IMAGE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdigest,
                "size": len(config),
            },
            "layers": [],
        }
        mdigest = _put_manifest(
            client, repo, "sha256:" + hashlib.sha256(json.dumps(image).encode()).hexdigest(), image, IMAGE
        )
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": IMAGE,
                    "digest": mdigest,
                    "size": len(json.dumps(image).encode()),
                    "platform": {"os": os_, "architecture": arch},
                }
            ],
        }
        idigest = _put_manifest(client, repo, f"v-{secrets.token_hex(4)}", index, INDEX)
    return ReleaseImage(f"{REGISTRY}/{repo}", idigest, platforms={platform: mdigest})


def release(version: str, image: ReleaseImage) -> ReleaseManifest:
    m = ReleaseManifest.for_runtime_image(version, image.ref)
    m.images["runtime"] = image
    return m


def key_pair(directory: Path) -> tuple[Path, Path]:
    from edge_deploy.release.signing import generate_key_pair

    return generate_key_pair(directory, PASSWORD)


def sign(image: ReleaseImage, key: Path) -> None:
    from edge_deploy.release.signing import sign_image

    image.signature = sign_image(image.ref, key, password=PASSWORD)
