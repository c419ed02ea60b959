"""``edge-runtime profile``: latency percentiles, throughput, memory, power and temperature."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_runtime.cli.options import backend_option, bundle_option, json_option


@click.command()
@bundle_option
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    envvar="EDGE_CACHE",
    default=None,
    help="Engine cache to use (default: a temporary one).",
)
@backend_option
@click.option("--runs", type=click.IntRange(1, 1_000_000), default=200, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@json_option
def profile(bundle: Path, cache: Path | None, backend: str, runs: int, batch: int, as_json: bool) -> None:
    """Run the bundle's engine RUNS times and report latency, throughput, memory and power."""
    from edge_runtime.device_profile import profile_bundle

    result = profile_bundle(bundle, cache, backend, runs=runs, batch=batch)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lat = result["latency"]
    click.echo(
        f"{result['bundle']} on {result['backend']} {result['backend_version']} "
        f"(engine cache {'hit' if result['cache_hit'] else 'miss'}), batch {lat['batch']}, {lat['runs']} runs"
    )
    click.echo(
        f"latency ms  p50 {lat['p50_ms']:.3f}  p90 {lat['p90_ms']:.3f}  p99 {lat['p99_ms']:.3f}  "
        f"mean {lat['mean_ms']:.3f}  max {lat['max_ms']:.3f}"
    )
    click.echo(f"throughput  {lat['throughput_per_s']:.1f} samples/s")
    click.echo(
        f"memory      peak RSS {result['peak_rss_mb']:.0f} MiB"
        + (
            f", GPU {result['gpu_memory']['used_mb']:.0f}/{result['gpu_memory']['total_mb']:.0f} MiB"
            if result["gpu_memory"]
            else ", GPU memory n/a"
        )
    )
    tegra = result["tegrastats"]
    if tegra:
        click.echo(
            f"power       mean {tegra.get('power_mean_mw', 0):.0f} mW, max {tegra.get('power_max_mw', 0)} mW; "
            f"max temp {tegra.get('temp_max_c', '-')} °C"
        )
    else:
        temps = {k: v for k, v in result["thermal_after_c"].items() if v is not None}
        click.echo(
            "power       n/a (no tegrastats); temperatures: "
            + (", ".join(f"{k} {v:.1f} °C" for k, v in temps.items()) or "no thermal zones")
        )
