"""``docker buildx bake`` over a build context laid out as a checkout (docker/docker-bake.hcl, sources):
run targets, read back their tags and digests, export the converted bundle."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_deploy.images.inspect import inspect_pushed
from edge_deploy.images.process import run_tool
from edge_deploy.images.result import ImageError, ImageResult

BAKE_FILE = "docker/docker-bake.hcl"  # in the context


def _variables_env(variables: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in variables.items()})
    return env


def _bake_file(context: Path) -> Path:
    path = context / BAKE_FILE
    if not path.is_file():
        raise ImageError(f"The build context {context} has no {BAKE_FILE}.")
    return path


def bake(
    targets: list[str],
    *,
    context: Path,
    push: bool = False,
    variables: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    progress: str = "auto",
) -> dict[str, ImageResult]:
    """Run ``docker buildx bake`` for ``targets`` with ``context`` as the working directory (the bake
    file's contexts, "." and docker/…, are relative to it); return each target's tags, digest and size."""
    variables = dict(variables or {})
    bake_file = _bake_file(context)
    with tempfile.TemporaryDirectory(prefix="edge-bake-") as tmp:
        meta = Path(tmp) / "metadata.json"
        cmd = ["docker", "buildx", "bake", "-f", str(bake_file), "--metadata-file", str(meta)]
        cmd += ["--progress", progress, *(["--push"] if push else [])]
        for o in overrides or []:
            cmd += ["--set", o]
        cmd += targets
        t0 = time.monotonic()
        run_tool(
            cmd,
            env=_variables_env(variables),
            what=f"docker buildx bake {' '.join(targets)}",
            stream=True,
            cwd=context,
        )
        seconds = time.monotonic() - t0
        metadata: dict[str, Any] = json.loads(meta.read_text()) if meta.exists() else {}
    tags = resolved_tags(targets, variables, context)
    results = {}
    for target in targets:
        md = metadata.get(target, {})
        digest = md.get("containerimage.digest")
        result = ImageResult(
            target=target,
            tags=tags.get(target, []),
            digest=digest if push else None,
            config_digest=md.get("containerimage.config.digest"),
            seconds=seconds,
        )
        if push and digest and result.tags:
            inspect_pushed(result)
        results[target] = result
    return results


def resolved_tags(targets: list[str], variables: dict[str, str], context: Path) -> dict[str, list[str]]:
    """Each target's tags as bake resolves them from ``variables`` (``bake --print``)."""
    proc = run_tool(
        ["docker", "buildx", "bake", "-f", str(_bake_file(context)), "--print", *targets],
        env=_variables_env(variables),
        what="docker buildx bake --print",
        cwd=context,
    )
    printed = json.loads(proc.stdout)
    return {name: list(t.get("tags") or []) for name, t in printed.get("target", {}).items()}


def export_bundle(
    variables: dict[str, str], dest: Path, *, context: Path, progress: str = "auto"
) -> dict[str, Any]:
    """Run the converter's model stage and export the bundle to ``dest``; return its bundle.json."""
    bake(
        ["bundle"],
        context=context,
        variables=variables,
        overrides=[f"bundle.output=type=local,dest={dest}"],
        progress=progress,
    )
    try:
        return dict(json.loads((dest / "bundle.json").read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageError(f"The model stage produced no readable bundle.json in {dest} ({exc}).") from None
