"""Every copy of a JetPack-table value outside Python (bake file, Dockerfiles, pyproject's jetson extra, the
host harness's stand-in) and every value the host side derives from it must equal the table's default row."""

from __future__ import annotations

import os
import re
from pathlib import Path

import tomllib
from click.testing import CliRunner
from packaging.requirements import Requirement

from edge_deploy.cli import cli
from edge_deploy.images import build as images_build
from edge_deploy.model import quantize
from edge_deploy.release import release
from edge_runtime.jetpack import versions

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def bake_defaults(text: str) -> dict[str, str]:
    """``variable "NAME" { default = "VALUE" }`` of an HCL bake file, one per line as ours are written."""
    return dict(re.findall(r'^variable\s+"(\w+)"\s*\{\s*default\s*=\s*"([^"]*)"\s*\}', text, re.M))


def dockerfile_args(text: str) -> dict[str, str]:
    """``ARG NAME=VALUE`` defaults of a Dockerfile (the first of each name: the global ones come first)."""
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG\s+(\w+)=(\S*)\s*$", text, re.M):
        args.setdefault(name, value)
    return args


def test_parsers_read_our_files_formats() -> None:
    assert bake_defaults('variable "A" { default = "x:1" }\nvariable "B" { default = "" }\n') == {
        "A": "x:1",
        "B": "",
    }
    assert dockerfile_args("ARG A=x:1\nFROM a\nARG A=y\nARG B\n") == {"A": "x:1"}


def test_bake_and_dockerfile_defaults_equal_the_default_row() -> None:
    t = versions()
    bake = bake_defaults((DOCKER / "docker-bake.hcl").read_text())
    assert bake["L4T_BASE"] == t.default.base_image, "docker-bake.hcl's L4T_BASE drifted from the table"
    assert bake["CONVERTER_BASE"] == t.converter_base, "docker-bake.hcl's CONVERTER_BASE drifted"
    runtime = dockerfile_args((DOCKER / "runtime.Dockerfile").read_text())
    assert runtime["L4T_BASE"] == t.default.base_image, "runtime.Dockerfile's ARG L4T_BASE drifted"
    assert runtime["CONVERTER_BASE"] == t.converter_base, "runtime.Dockerfile's ARG CONVERTER_BASE drifted"
    converter = dockerfile_args((DOCKER / "converter.Dockerfile").read_text())
    assert converter["CONVERTER_BASE"] == t.converter_base, (
        "converter.Dockerfile's ARG CONVERTER_BASE drifted"
    )


def test_jetson_extra_pins_the_default_rows_cuda_python() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["jetson"]
    pins = [Requirement(r) for r in extra if Requirement(r).name == "cuda-python"]
    assert len(pins) == 1
    assert str(pins[0].specifier) == str(Requirement(f"x{versions().default.cuda_python}").specifier), (
        "pyproject.toml's jetson extra pins another cuda-python than the default JetPack row"
    )


def test_host_values_derive_from_the_table() -> None:
    t = versions()
    assert t.default.base_image == release.DEFAULT_L4T_BASE
    assert t.default.tensorrt == quantize.DEFAULT_TRT_VERSION
    assert t.default.base_image == images_build.DEFAULT_L4T_BASE
    assert t.converter_base == images_build.DEFAULT_CONVERTER_BASE
    assert t.converter_python == images_build.DEFAULT_CONVERTER_PYTHON
    assert os.environ.get("EDGE_RUNTIME_PYTHON", t.default.python) == images_build.DEFAULT_RUNTIME_PYTHON
    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli, ["image", "build", "--help"]).output.split())
    assert t.default.base_image in help_text and t.converter_base in help_text
    assert f"{t.default.python} on JetPack {t.default.jetpack}" in help_text
    convert_help = " ".join(runner.invoke(cli, ["convert", "--help"]).output.split())
    assert f"[default: {t.default.tensorrt}]" in convert_help


def test_docs_name_the_tables_defaults() -> None:
    t = versions()
    images = (ROOT / "docs" / "images.md").read_text()
    assert re.findall(r"FROM \$\{L4T_BASE\}` \(default `([^`]+)`", images) == [t.default.base_image]
    pipeline = " ".join((ROOT / "docs" / "model-pipeline.md").read_text().split())
    assert re.findall(r"`--trt-version`, default ([\d.]+)", pipeline) == [t.default.tensorrt]


def test_host_setup_builds_the_tables_stand_in() -> None:
    standin = versions().default.standin
    assert standin is not None
    script = (ROOT / "scripts" / "host-setup").read_text()
    repo, tag = standin.image.rsplit(":", 1)
    assert f"BASE_REPO=${{EDGE_BASE_REPO:-$REGISTRY/{repo}}}" in script
    assert f"BASE_TAG=${{EDGE_BASE_TAG:-{tag}}}" in script
    for arch, version in standin.tensorrt.items():
        assert re.search(rf"^STANDIN_TRT_{arch}={re.escape(version)}\b", script, re.M), arch


def test_no_other_file_spells_the_default_base_or_tensorrt() -> None:
    """Only the table and its checked copies name the default base; code reads the table instead."""
    t = versions()
    allowed = {
        ROOT / "runtime/edge_runtime/jetpack.json",
        DOCKER / "docker-bake.hcl",
        DOCKER / "runtime.Dockerfile",
    }
    base = str(t.default.base_image)
    trt = re.compile(rf"[\"']{re.escape(t.default.tensorrt)}[\"']")
    offenders = []
    for folder in ("build/edge_deploy", "runtime/edge_runtime", "docker"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path in allowed or path.suffix in (".pyc", ".so"):
                continue
            text = path.read_text(errors="replace")
            if base in text or (path.suffix == ".py" and trt.search(text)):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"hard-coded JetPack values outside the table: {offenders}"
