"""``edge-deploy sample-model``: write the shipped sample policy (and a calibration set)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import json_option


@click.command("sample-model")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the TorchScript policy (.pt).",
)
@click.option(
    "--calibration-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a calibration set (.npz with arrays image, robot_state).",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Number of calibration samples.",
)
@json_option("Print what was written as JSON.")
def sample_model(output: Path, calibration_out: Path | None, samples: int, as_json: bool) -> None:
    """Write a small image + robot-state policy as TorchScript, with deterministic weights; no downloads."""
    from edge_deploy.model.sample import write_sample_policy

    written = write_sample_policy(output, calibration_out, samples)
    if as_json:
        click.echo(json.dumps(written, indent=2))
        return
    click.echo(
        f"wrote {written['model']} ({written['parameters']:,} parameters, {written['bytes'] / 1e6:.2f} MB)"
    )
    if "calibration" in written:
        click.echo(f"wrote {written['calibration']} ({written['calibration_samples']} calibration samples)")
