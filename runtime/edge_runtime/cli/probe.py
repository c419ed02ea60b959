"""``edge-runtime probe``: what this device is (L4T, board, GPU, TensorRT, power mode, temperatures)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_runtime.cli.options import json_option


@click.command()
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    envvar="EDGE_DEVICE_ROOT",
    default=Path("/"),
    show_default=True,
    help="Read /etc, /proc and /sys under this directory.",
)
@json_option
def probe(root: Path, as_json: bool) -> None:
    """Show the device identity the engine cache keys on, and the device's current state."""
    from edge_runtime.device import probe as run_probe

    info = run_probe(root)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
        return
    ident = info.identity
    rows = [
        ("jetson", "yes" if info.is_jetson else "no"),
        ("L4T", f"{info.l4t.version} (JetPack {info.l4t.jetpack})" if info.l4t else "-"),
        ("board", info.model or "-"),
        ("module", info.module["name"] if info.module else "-"),
        ("GPU", f"{ident.gpu}" + (f" (sm {ident.compute_capability})" if ident.compute_capability else "")),
        (
            "GPU visible",
            "-" if info.gpu_visible is None else ("yes" if info.gpu_visible else "no (CUDA sees none)"),
        ),
        ("CPU", f"{ident.cpu} ({ident.arch})"),
        ("TensorRT", info.tensorrt or "-"),
        ("CUDA", info.cuda or "-"),
        ("power mode", info.power_mode or "-"),
        ("tegrastats", info.tegrastats or "-"),
    ]
    for z in info.thermal_zones:
        rows.append((f"thermal {z.type}", f"{z.temp_c:.1f} °C" if z.temp_c is not None else "off"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
