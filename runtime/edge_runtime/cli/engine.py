"""``edge-runtime engine build|list|verify|clear``: inspect and manage the engine cache."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_runtime.cli.options import (
    backend_option,
    bundle_option,
    cache_option,
    json_option,
    precision_option,
)


@click.group()
def engine() -> None:
    """Build, list, verify and clear cached engines."""


@engine.command()
@bundle_option
@cache_option
@backend_option
@precision_option
@json_option
def build(bundle: Path, cache: Path, backend: str, precision: str | None, as_json: bool) -> None:
    """Build the engine for BUNDLE into the cache (a cache hit builds nothing)."""
    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle
    from edge_runtime.cache import EngineCache
    from edge_runtime.device import device_identity, read_board_model

    mb = ModelBundle.load(bundle)
    be = get_backend(backend)
    options = BuildOptions.for_bundle(mb, read_board_model(), precision)
    result = EngineCache(cache).open(
        be, mb, options, device_identity(), progress=lambda m: click.echo(m, err=True)
    )
    result.engine.close()
    info = {
        "key": result.key.digest,
        "hit": result.hit,
        "build_seconds": result.build_seconds,
        "path": str(result.path),
        "backend": be.name,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(
            f"{'cache hit' if result.hit else 'built'}: {result.path} ({be.name}, "
            f"{result.build_seconds:.2f} s build)"
        )


@engine.command("list")
@cache_option
@json_option
def list_(cache: Path, as_json: bool) -> None:
    """List cached engines, newest first, with the parts of their key."""
    from edge_runtime.cache import EngineCache

    entries = EngineCache(cache).entries()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no engines in {cache}")
    for e in entries:
        parts = e.meta.get("parts", {})
        dev = parts.get("device") or {}
        click.echo(
            f"{e.key[:12]}  {e.meta.get('backend')} {e.meta.get('backend_version')}  "
            f"{parts.get('precision')} batch {parts.get('batch')}  L4T {dev.get('l4t') or '-'}  "
            f"GPU {dev.get('gpu')}  bundle {str(parts.get('bundle_sha256'))[:12]}  "
            f"{e.meta.get('size', 0) / 1e6:.1f} MB  built {e.created}"
        )


@engine.command()
@cache_option
@click.option("--quarantine", is_flag=True, help="Move bad entries to quarantine/.")
@json_option
def verify(cache: Path, quarantine: bool, as_json: bool) -> None:
    """Check every engine against its sidecar checksum; exit 1 if any is bad."""
    from edge_runtime.cache import EngineCache

    report = EngineCache(cache).verify(quarantine=quarantine)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for r in report:
            click.echo(f"{r['key'][:12]}  {'ok' if r['ok'] else 'BAD: ' + str(r['problem'])}")
    if not all(r["ok"] for r in report):
        raise SystemExit(1)


@engine.command()
@cache_option
@json_option
def clear(cache: Path, as_json: bool) -> None:
    """Remove every cached engine (the TensorRT timing cache is kept)."""
    from edge_runtime.cache import EngineCache

    n = EngineCache(cache).clear()
    click.echo(json.dumps({"removed": n}) if as_json else f"removed {n} engine(s) from {cache}")
