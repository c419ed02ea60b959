"""``docker buildx bake`` over a build context laid out as a checkout (docker/docker-bake.hcl, sources):
run targets, read back their tags and digests, export the converted bundle."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_deploy.images.inspect import inspect_pushed
from edge_deploy.images.process import run_tool
from edge_deploy.images.result import ImageError, ImageResult

log = logging.getLogger(__name__)

BAKE_FILE = "docker/docker-bake.hcl"  # in the context
# Targets that make images; their pushed output rewrites every file's and layer's time to
# SOURCE_DATE_EPOCH (BuildKit ≥ 0.13), so two builds of one commit give one digest. The engine's own
# builder ("docker" driver) always unpacks the image into the engine, which BuildKit refuses with
# rewrite-timestamp: there the push is plain (docs/images.md, reproducible images).
IMAGE_TARGETS = ("converter", "runtime")
PUSH_OUTPUT = "type=image,push=true,rewrite-timestamp=true"


def builder_driver() -> str:
    """The current buildx builder's driver (docker, docker-container, ...); "" when buildx cannot say."""
    proc = subprocess.run(["docker", "buildx", "inspect"], text=True, capture_output=True, check=False)
    found = re.search(r"^Driver:\s*(\S+)", proc.stdout, re.M) if proc.returncode == 0 else None
    return found.group(1) if found else ""


def push_args(targets: list[str]) -> list[str]:
    """How bake pushes ``targets``: with rewrite-timestamp where the builder can, else bake's --push
    (which would replace an output, so it is not combined with one)."""
    if builder_driver() in ("", "docker"):
        return ["--push"]
    return [arg for t in targets if t in IMAGE_TARGETS for arg in ("--set", f"{t}.output={PUSH_OUTPUT}")]


def base_digest(ref: str) -> str:
    """The digest of base image ``ref`` as its registry (else the local engine) has it now, for the
    images' ``org.opencontainers.image.base.digest`` label; "" when neither knows it (one log line)."""
    proc = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest}}"],
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode == 0:
        try:
            return str(json.loads(proc.stdout)["digest"])
        except (ValueError, KeyError, TypeError):
            pass
    proc = subprocess.run(
        ["docker", "image", "inspect", ref, "--format", "{{json .RepoDigests}}"],
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode == 0:
        try:
            digests = json.loads(proc.stdout) or []
        except ValueError:
            digests = []
        if digests:
            return str(digests[0]).rpartition("@")[2]
    log.warning("base image %s: no digest in the registry or the engine; its label stays empty", ref)
    return ""


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
    files: Sequence[Path] = (),
) -> dict[str, ImageResult]:
    """Run ``docker buildx bake`` for ``targets`` with ``context`` as the working directory (the bake
    file's contexts, "." and docker/…, are relative to it); return each target's tags, digest and size.
    ``files`` are bake files read after the context's own (a generated one for several models)."""
    variables = dict(variables or {})
    bake_file = _bake_file(context)
    with tempfile.TemporaryDirectory(prefix="edge-bake-") as tmp:
        meta = Path(tmp) / "metadata.json"
        cmd = ["docker", "buildx", "bake", "-f", str(bake_file), *_extra(files), "--metadata-file", str(meta)]
        cmd += ["--progress", progress]
        if push:
            cmd += push_args(targets)
        epoch = variables.get("SOURCE_DATE_EPOCH", "")
        if epoch:  # the build arg BuildKit dates files, layers and the image config with
            cmd += [arg for t in targets for arg in ("--set", f"{t}.args.SOURCE_DATE_EPOCH={epoch}")]
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
    tags = resolved_tags(targets, variables, context, files)
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


def _extra(files: Sequence[Path]) -> list[str]:
    return [arg for f in files for arg in ("-f", str(f))]


def resolved_tags(
    targets: list[str], variables: dict[str, str], context: Path, files: Sequence[Path] = ()
) -> dict[str, list[str]]:
    """Each target's tags as bake resolves them from ``variables`` (``bake --print``)."""
    proc = run_tool(
        ["docker", "buildx", "bake", "-f", str(_bake_file(context)), *_extra(files), "--print", *targets],
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


def export_model_bundles(
    variables: dict[str, str],
    targets: dict[str, Path],
    *,
    context: Path,
    files: Sequence[Path],
    progress: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Run each model's convert stage (``targets``: bake target → destination) in one bake call, export
    every bundle; return each target's bundle.json."""
    bake(
        list(targets),
        context=context,
        variables=variables,
        overrides=[f"{t}.output=type=local,dest={dest}" for t, dest in targets.items()],
        progress=progress,
        files=files,
    )
    out = {}
    for target, dest in targets.items():
        try:
            out[target] = dict(json.loads((dest / "bundle.json").read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ImageError(
                f"The convert stage of {target} produced no readable bundle.json in {dest} ({exc})."
            ) from None
    return out
