"""``edge-deploy bench``: latency, throughput and peak memory of a model bundle on ONNX Runtime (CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edge_deploy.cli.options import json_option


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--warmup", type=click.IntRange(0, 100_000), default=10, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=None, help="Batch size [default: the bundle's OPT].")
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads (0 = library default).",
)
@json_option()
def bench(bundle: Path, runs: int, warmup: int, batch: int | None, threads: int, as_json: bool) -> None:
    """Benchmark BUNDLE on the ONNX Runtime backend: latency mean/p50/p90/p99, throughput, peak RSS."""
    from edge_deploy.model.bench import bench_bundle

    result = bench_bundle(bundle, runs=runs, warmup=warmup, batch=batch, threads=threads)
    data = result.to_dict()
    if as_json:
        data["validation"] = _validation_summary(result.bundle)
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{bundle} · {result.precision} · {result.backend} {result.backend_version} · batch {result.latency.batch}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms"):
        table.add_row(key.replace("_ms", " (ms)"), f"{data[key]:.3f}")
    table.add_row("throughput (samples/s)", f"{data['throughput_per_s']:.1f}")
    table.add_row("peak RSS (MiB)", f"{data['peak_rss_mb']:.1f}")
    table.add_row("engine build (s)", f"{data['build_seconds']:.3f}")
    table.add_row("runs / warmup", f"{runs} / {warmup}")
    for key, cmp in _validation_summary(result.bundle).items():
        table.add_row(f"{key} max abs error", f"{cmp['max_abs']:.3g} (tol {cmp['tolerance']:g})")
    Console().print(table)


def _validation_summary(path: str) -> dict[str, dict[str, Any]]:
    from edge_runtime.bundle import ModelBundle

    manifest = ModelBundle.load(path, verify=False).manifest
    return {
        k: {"max_abs": v.get("max_abs", 0.0), "tolerance": v.get("tolerance", 0.0), "passed": v.get("passed")}
        for k, v in manifest.validation.items()
        if isinstance(v, dict)
    }
