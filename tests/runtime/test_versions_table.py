"""The JetPack table: loaded from package data, consistent with itself, the device's L4T → JetPack answer,
and the docs table generated from it."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from edge_runtime.device import L4TRelease
from edge_runtime.jetpack import VersionsTableError, markdown_table, parse_table, versions

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images.md"


def _raw() -> dict[str, Any]:
    return dict(json.loads(resources.files("edge_runtime").joinpath("jetpack.json").read_text()))


def test_default_row_is_jetpack_6_1_on_l4t_jetpack_r36_4() -> None:
    t = versions()
    d = t.default
    assert (d.jetpack, d.l4t, d.cuda, d.tensorrt, d.python) == ("6.1", "36.4.0", "12.6", "10.3.0", "3.10")
    assert d.base_image == "nvcr.io/nvidia/l4t-jetpack:r36.4.0" and d.deploy
    assert d.cuda_python_requirement == "cuda-python>=12.6,<13"
    assert d.standin is not None and d.standin.reference("localhost:5000") == (
        "localhost:5000/edge-deploy/l4t-standin:r36.4"
    )
    assert t.release("7.0").cuda_python == ">=13.0,<14"  # JetPack 7 has CUDA 13: cuda-python 13
    assert t.for_base("nvcr.io/nvidia/l4t-jetpack:r36.4.0") is not None
    assert t.for_base("example.org/other:1") is None


def test_rows_agree_with_themselves() -> None:
    t = versions()
    l4ts = [Version(r.l4t) for r in t.releases]
    assert l4ts == sorted(l4ts), "rows are ordered by L4T release"
    generations: dict[int, str] = {}
    for r in t.releases:
        # one JetPack generation per L4T major, so the device's answer from the major is unambiguous
        assert generations.setdefault(r.l4t_major, r.generation) == r.generation, r
        if r.cuda_python is not None:
            spec = SpecifierSet(r.cuda_python)
            cuda = Version(r.cuda)
            # cuda-python's major is CUDA's: it must take this CUDA and refuse the next major
            assert spec.contains(f"{cuda.major}.{cuda.minor}.0"), r
            assert not spec.contains(f"{cuda.major + 1}.0.0"), r
        if r.deploy:
            # the runtime is Python 3.10 and newer, and an image needs a base to be built FROM
            assert Version(r.python) >= Version("3.10") and r.base_image and r.cuda_python, r
            assert r.note, "every row says why it is or is not deployable"
        else:
            assert r.note, r


def test_table_refuses_what_the_product_could_not_use() -> None:
    broken = _raw()
    broken["default"] = "5.1"  # Python 3.8: not deployable
    with pytest.raises(VersionsTableError, match=r"default '5\.1' is not a deployable row"):
        parse_table(broken)
    twice = _raw()
    twice["releases"].append(copy.deepcopy(twice["releases"][-1]))
    with pytest.raises(VersionsTableError, match="twice"):
        parse_table(twice)
    missing = _raw()
    del missing["releases"][0]["l4t"]
    with pytest.raises(VersionsTableError, match="malformed"):
        parse_table(missing)
    with pytest.raises(
        VersionsTableError, match=r"JetPack '9.9' is not in the versions table \(known: 4.6.1"
    ):
        versions().release("9.9")


@pytest.mark.parametrize(
    ("line", "generation", "release"),
    [
        ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64", "6", "6.1"),
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", "6", "6.2"),
        ("# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, EABI: aarch64", "6", None),
        ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64", "5", "5.1.3"),
        ("# R38 (release), REVISION: 2.0, GCID: 40000000, BOARD: generic, EABI: aarch64", "7", "7.0"),
        ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64", "4", "4.6.1"),
        ("# R99 (release), REVISION: 1.0, GCID: 1, BOARD: generic, EABI: aarch64", "?", None),
    ],
)
def test_device_l4t_to_jetpack_comes_from_the_table(line: str, generation: str, release: str | None) -> None:
    l4t = L4TRelease.parse(line)
    assert l4t is not None
    assert (l4t.jetpack, l4t.jetpack_release) == (generation, release)


def test_docs_table_is_generated_from_the_data() -> None:
    text = DOCS.read_text()
    begin = text.index("<!-- jetpack-table:begin")
    body = text[text.index("\n", begin) + 1 : text.index("<!-- jetpack-table:end")]
    assert body == markdown_table(), (
        "docs/images.md's JetPack table differs from runtime/edge_runtime/jetpack.json; paste "
        "edge_runtime.jetpack.markdown_table() between the markers"
    )
    assert "| 6.1 | 36.4.0 | 12.6 | 10.3.0 |" in body and "**default**" in body
