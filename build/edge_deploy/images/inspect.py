"""Read a pushed image back from its registry: per-platform manifest digests and compressed size."""

from __future__ import annotations

import json

from edge_deploy.images.process import run_tool
from edge_deploy.images.result import ImageResult


def inspect_pushed(result: ImageResult) -> None:
    """Fill ``result``'s per-platform manifest digests and compressed size from the registry."""
    ref = f"{result.repository}@{result.digest}"
    index = json.loads(
        run_tool(["docker", "buildx", "imagetools", "inspect", "--raw", ref], what=f"Inspecting {ref}").stdout
    )
    manifests = index.get("manifests")
    if manifests is None:  # a single-platform manifest
        result.size_bytes = sum(layer.get("size", 0) for layer in index.get("layers", []))
        return
    for m in manifests:
        plat = m.get("platform") or {}
        if plat.get("os") == "unknown":  # attestation manifests
            continue
        name = f"{plat.get('os')}/{plat.get('architecture')}" + (
            f"/{plat['variant']}" if plat.get("variant") else ""
        )
        result.platforms[name] = m["digest"]
    first = next(iter(result.platforms.values()), None)
    if first:
        sub = json.loads(
            run_tool(
                ["docker", "buildx", "imagetools", "inspect", "--raw", f"{result.repository}@{first}"],
                what="Inspecting a platform manifest",
            ).stdout
        )
        result.size_bytes = sum(layer.get("size", 0) for layer in sub.get("layers", []))
