"""``edge-runtime engine build|list|verify|clear|pins|unpin|prune|quarantine``: inspect and manage the engine
cache. ``build --pin`` and ``prune --keep`` are what a rollout runs on the robot, so the engines of the releases
the robot keeps are never evicted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edge_runtime.cli.options import (
    backend_option,
    cache_option,
    json_option,
    model_source_options,
    precision_option,
)


def _pin_name(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """Check pin names before anything runs (they become file names in the cache volume)."""
    from edge_runtime.cache import check_pin_name
    from edge_runtime.errors import CacheError

    names = value if isinstance(value, tuple) else (value,)
    for name in names:
        if name is not None:
            try:
                check_pin_name(str(name))
            except CacheError as exc:
                raise click.BadParameter(str(exc)) from None
    return value


@click.group()
def engine() -> None:
    """Build, list, verify and clear cached engines; pin the engines of the releases a robot keeps."""


@engine.command()
@model_source_options(
    "Model bundle directory, built when --models holds no bundle [env EDGE_BUNDLE].",
    "Model repository: build every model's engine (one pin keeps them all) [env EDGE_MODELS].",
)
@cache_option
@backend_option
@precision_option
@click.option(
    "--pin",
    "pin",
    envvar="EDGE_ENGINE_PIN",
    default=None,
    callback=_pin_name,
    help="Pin the engine under this name (a release version): eviction keeps it until "
    "'engine unpin' or 'engine prune' drops the pin [env EDGE_ENGINE_PIN].",
)
@json_option
def build(
    bundle: Path | None,
    models: Path | None,
    cache: Path,
    backend: str,
    precision: str | None,
    pin: str | None,
    as_json: bool,
) -> None:
    """Build the engine for BUNDLE (or for every model of a repository) into the cache (a cache hit builds
    nothing). The JSON's top-level keys describe the first model; ``models`` lists each of them."""
    from edge_runtime.backends import BuildOptions, get_backend
    from edge_runtime.bundle import ModelBundle
    from edge_runtime.cache import EngineCache
    from edge_runtime.device import device_identity, read_board_model
    from edge_runtime.errors import CacheError, EdgeError
    from edge_runtime.repository import discover, is_repository

    if models is not None and is_repository(models):
        bundles = {name: ModelBundle.load(path) for name, path in discover(models).items()}
    elif bundle is not None:
        mb = ModelBundle.load(bundle)
        bundles = {mb.manifest.name: mb}
    else:
        raise EdgeError("No model to build: pass --bundle, or --models with a model repository.")
    be = get_backend(backend)
    engine_cache = EngineCache(cache, keep=max(3, len(bundles) + 1))
    built = []
    for name, mb in bundles.items():
        options = BuildOptions.for_bundle(mb, read_board_model(), precision)
        result = engine_cache.open(
            be, mb, options, device_identity(), progress=lambda m: click.echo(m, err=True)
        )
        result.engine.close()
        built.append((name, result))
    if pin:
        try:  # one pin keeps every model's engine of the release
            engine_cache.pin(pin, [r.key.digest for _, r in built])
        except CacheError as exc:  # the engine is built and usable; a rollout must not call that release bad
            click.echo(f"warning: the engine was not pinned as {pin}: {exc}", err=True)
            pin = None
    each: list[dict[str, Any]] = [
        {
            "model": name,
            "key": r.key.digest,
            "hit": r.hit,
            "build_seconds": r.build_seconds,
            "path": str(r.path),
        }
        for name, r in built
    ]
    info = {
        **{k: v for k, v in each[0].items() if k != "model"},
        "hit": all(e["hit"] for e in each),
        "build_seconds": sum(float(e["build_seconds"]) for e in each),
        "backend": be.name,
        "pin": pin,
        "models": each,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for name, r in built:
            named = f"{name}: " if len(built) > 1 else ""
            click.echo(
                f"{named}{'cache hit' if r.hit else 'built'}: {r.path} ({be.name}, "
                f"{r.build_seconds:.2f} s build{f', pinned as {pin}' if pin else ''})"
            )


@engine.command("list")
@cache_option
@json_option
def list_(cache: Path, as_json: bool) -> None:
    """List cached engines, newest first, with the parts of their key."""
    from edge_runtime.cache import EngineCache

    engine_cache = EngineCache(cache)
    entries = engine_cache.entries()
    pinned: dict[str, list[str]] = {}
    for name, keys in engine_cache.pins().items():
        for key in keys:
            pinned.setdefault(key, []).append(name)
    if as_json:
        click.echo(json.dumps([{**e.to_dict(), "pins": pinned.get(e.key, [])} for e in entries], indent=2))
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
            + (f"  pinned by {', '.join(pinned[e.key])}" if e.key in pinned else "")
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


@engine.command()
@cache_option
@json_option
def pins(cache: Path, as_json: bool) -> None:
    """List pins: each names a release and the engine key eviction keeps for it."""
    from edge_runtime.cache import EngineCache

    engine_cache = EngineCache(cache)
    found = engine_cache.pins()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    present = {e.key for e in engine_cache.entries()}
    if not found:
        click.echo(f"no pins in {cache}")
    for name, keys in found.items():
        shown = (
            ", ".join(f"{k[:12]}{'' if k in present else ' (not cached)'}" for k in keys) or "(unreadable)"
        )
        click.echo(f"{name}  {shown}")


@engine.command()
@cache_option
@click.argument("names", nargs=-1, required=True, callback=_pin_name)
@json_option
def unpin(cache: Path, names: tuple[str, ...], as_json: bool) -> None:
    """Remove the pins NAMES; their engines then follow the most-recently-used rule."""
    from edge_runtime.cache import EngineCache

    removed = EngineCache(cache).unpin(names)
    if as_json:
        click.echo(json.dumps({"unpinned": removed}))
        return
    for name in names:
        click.echo(f"unpinned {name}" if name in removed else f"no pin named {name}")


@engine.command()
@cache_option
@click.option(
    "--keep",
    "keep_pins",
    multiple=True,
    required=True,
    callback=_pin_name,
    help="A pin to keep (repeat): the releases the robot keeps. Every other pin is dropped.",
)
@click.option(
    "--keep-unpinned",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Unpinned engines to keep, most recently used first (the service keeps as many).",
)
@json_option
def prune(cache: Path, keep_pins: tuple[str, ...], keep_unpinned: int, as_json: bool) -> None:
    """Drop the pins of releases no longer kept, then evict what no pin keeps beyond --keep-unpinned."""
    from edge_runtime.cache import EngineCache

    engine_cache = EngineCache(cache)
    dropped, evicted = engine_cache.prune(keep_pins, keep=keep_unpinned)
    kept = sorted(engine_cache.pins())
    if as_json:
        click.echo(json.dumps({"unpinned": dropped, "evicted": evicted, "kept": kept}))
    else:
        click.echo(
            f"dropped {len(dropped)} pin(s){': ' + ', '.join(dropped) if dropped else ''}; "
            f"evicted {len(evicted)} engine(s); pins kept: {', '.join(kept) or 'none'}"
        )


@engine.command("quarantine")
@cache_option
@json_option
def quarantine_(cache: Path, as_json: bool) -> None:
    """List quarantined entries: why, how often the same bytes came back, whether their files were kept."""
    from edge_runtime.cache import EngineCache

    records = EngineCache(cache).quarantined()
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo(f"nothing quarantined in {cache}")
    for r in records:
        kept = f"{r['bytes'] / 1e6:.1f} MB kept" if r.get("files") else "files not kept"
        click.echo(
            f"{str(r.get('key'))[:12]}  seen {r.get('count')}x, last {r.get('last_seen')}  {kept}  "
            f"{r.get('reason')}"
        )
