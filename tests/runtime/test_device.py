from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.device import L4TRelease, device_identity, probe, read_board_model, read_thermal_zones


def test_l4t_release_lines() -> None:
    r36 = L4TRelease.parse(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
        "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\n"
    )
    assert r36 is not None and (r36.version, r36.jetpack, r36.board) == ("36.4.0", "6", "generic")
    r35 = L4TRelease.parse(
        "# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Feb 20 04:46:31 UTC 2024"
    )
    assert r35 is not None and (r35.version, r35.jetpack, r35.board) == ("35.5.0", "5", "t186ref")
    assert L4TRelease.parse("garbage") is None


def test_probe_on_orin_nano_fixture(fake_root: Path) -> None:
    info = probe(fake_root)
    assert info.is_jetson
    assert info.model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"  # NUL stripped
    assert info.module is not None and info.module["key"] == "orin_nano"
    assert info.identity.l4t == "36.4.0" and info.identity.compute_capability == "8.7"
    assert info.power_mode == "0"
    zones = {z.type: z.temp_c for z in info.thermal_zones}
    assert zones["cpu-thermal"] == 46.25 and zones["cv0-thermal"] is None  # -256 °C: sensor off


def test_non_jetson_identity_is_absent_but_stable(tmp_path: Path) -> None:
    assert read_board_model(tmp_path) is None and read_thermal_zones(tmp_path) == []
    a, b = device_identity(tmp_path), device_identity(tmp_path)
    assert a == b and a.l4t is None and a.board is None and a.gpu == "cpu"
    assert probe(tmp_path).is_jetson is False


def test_probe_cli_json(fake_root: Path) -> None:
    r = CliRunner().invoke(cli, ["probe", "--root", str(fake_root), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["l4t"]["version"] == "36.4.0" and data["module"]["name"] == "Jetson Orin Nano 8GB"
    text = CliRunner().invoke(cli, ["probe", "--root", str(fake_root)]).output
    assert "JetPack 6" in text and "cv0-thermal" in text


def test_probe_says_whether_cuda_sees_a_gpu(fake_root: Path) -> None:
    from edge_runtime.device import cuda_gpu

    assert probe(fake_root).gpu_visible is None  # a fixture root: CUDA is not asked
    live = probe(Path("/"))
    assert live.gpu_visible is (cuda_gpu() is not None)
    assert live.to_dict()["gpu_visible"] is live.gpu_visible
    text = CliRunner().invoke(cli, ["probe"]).output
    want = "yes" if live.gpu_visible else "no (CUDA sees none)"
    assert re.search(rf"^GPU visible +{re.escape(want)}$", text, re.M), text
