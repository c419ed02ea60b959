"""``edge-deploy convert``: model file → model bundle, printing each step with its timing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import json_option
from edge_runtime.bundle import PRECISIONS
from edge_runtime.jetpack import default_release


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Bundle directory to write (with --models: the model repository, one bundle per model).",
)
@click.option(
    "--models",
    "models_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A models.yaml: convert each model with its own precision, calibration, batch and inputs into "
    "OUTPUT/<name>/ (and its pipelines file to OUTPUT/pipelines.json), the runtime's model repository.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="npz of named input arrays; required for int8, used for validation otherwise.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["entropy", "minmax", "percentile"]),
    default="entropy",
    show_default=True,
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (15 or newer).")
@click.option(
    "--batch", "batch", default="1,1,8", show_default=True, help="Dynamic batch profile MIN,OPT,MAX."
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:SHAPE[:DTYPE]",
    help="Input shape (and dtype) override, e.g. image:Bx3x224x224 or tokens:Bx16:int64 (repeatable). "
    "A dynamic non-batch axis takes a number (fixed) or a range MIN..MAX or MIN..OPT..MAX (OPT defaults to "
    "MAX), e.g. obs:Bx3x96..224x96..160..224; the range becomes the TensorRT optimization profile.",
)
@click.option("--tolerance", type=float, default=None, help="Max abs error accepted (default per precision).")
@click.option(
    "--fp16-onnx/--fp16-flag-only",
    default=True,
    show_default=True,
    help="fp16: ship an fp16 ONNX, or keep fp32 ONNX and only record FP16 for the engine build.",
)
@click.option(
    "--trt-version",
    default=default_release().tensorrt,
    show_default=True,
    help="TensorRT version named in the int8 calibration cache header (the default JetPack's TensorRT).",
)
@click.option(
    "--embed-calibration",
    type=click.IntRange(0, None),
    default=0,
    show_default=True,
    help="int8: also put N calibration samples in the bundle, for a device that must recalibrate "
    "(a TensorRT version that rejects the shipped cache). 0 keeps model-only releases small.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@json_option("Print the summary as JSON on stdout.")
def convert(
    model: Path | None,
    output: Path,
    models_file: Path | None,
    precision: str,
    calibration: Path | None,
    calibration_method: str,
    opset: int,
    batch: str,
    inputs: tuple[str, ...],
    tolerance: float | None,
    fp16_onnx: bool,
    trt_version: str,
    embed_calibration: int,
    force: bool,
    as_json: bool,
) -> None:
    """Export, sanitize, validate and (fp16/int8) quantize MODEL into a model bundle.

    MODEL is TorchScript (.pt), a torch.save'd full module, or an .onnx file (export is skipped). With
    --models, every model of a models.yaml instead.
    """
    from edge_deploy.model import ConvertOptions, Step
    from edge_deploy.model import convert as run_convert
    from edge_runtime.bundle import BatchProfile

    if (model is None) == (models_file is None):
        raise click.UsageError("Give MODEL, or several models with --models FILE.")
    if models_file is not None:
        from edge_deploy.images.models import convert_repository

        done = convert_repository(
            models_file,
            output,
            dict(
                calibration_method=calibration_method,
                opset=opset,
                tolerance=tolerance,
                fp16_onnx=fp16_onnx,
                trt_version=trt_version,
                embed_calibration=embed_calibration,
                force=force,
            ),
            on_model=lambda name, spec: click.echo(f"convert {spec} → {output / name}", err=True),
        )
        rows = {
            n: {"path": str(b.path), "sha256": b.sha256, "precision": b.manifest.precision}
            for n, b in done.items()
        }
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for name, r in rows.items():
            click.echo(f"model {name:<16} {r['path']}  sha256 {r['sha256'][:16]}  ({r['precision']})")
        return
    assert model is not None

    opts = ConvertOptions(
        precision=precision,
        calibration=calibration,
        calibration_method=calibration_method,
        opset=opset,
        batch=BatchProfile.parse(batch),
        inputs=inputs,
        tolerance=tolerance,
        fp16_onnx=fp16_onnx,
        trt_version=trt_version,
        embed_calibration=embed_calibration,
        force=force,
    )

    def show(step: Step) -> None:
        click.echo(f"  {step.name:<26} {step.seconds:7.2f} s  {step.detail}", err=True)

    click.echo(f"convert {model} → {output} ({precision})", err=True)
    result = run_convert(model, output, opts, on_step=show)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"bundle {result.bundle.path}  sha256 {result.bundle.sha256[:16]}  ({result.seconds:.2f} s)")
    for key, cmp in result.validation.items():
        worst = max(cmp["outputs"], key=lambda o: o["max_abs"])
        click.echo(
            f"  {key:<14} max abs {cmp['max_abs']:.3g}  max rel {worst['max_rel']:.3g}  "
            f"mean abs {worst['mean_abs']:.3g}  tolerance {cmp['tolerance']:g}  "
            f"{'ok' if cmp['passed'] else 'FAILED'}"
        )
