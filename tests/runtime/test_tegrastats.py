from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_runtime.tegrastats import TegrastatsSampler, parse_line, summarize
from tests.runtime.conftest import FIXTURES


def samples() -> list[str]:
    lines = (FIXTURES / "tegrastats_samples.txt").read_text().splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def test_jetpack5_agx_orin_line() -> None:
    s = parse_line(samples()[0])
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (2448, 30536, 0, 15268)
    assert len(s.cpu_load_pct) == 12 and s.cpu_load_pct[0] == 2 and s.cpu_load_pct[-1] is None
    assert s.cpu_freq_mhz[0] == 729
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_load_pct) == (0, 305, 0)
    assert "gpu" not in s.temps_c and "cv0" not in s.temps_c  # -256C: off
    assert s.temps_c["cpu"] == 45.187 and s.temps_c["tj"] == 45.187
    assert s.rails_mw == {"VDD_GPU_SOC": 2791, "VDD_CPU_CV": 398, "VIN_SYS_5V0": 2521, "VDDQ_VDD2_1V8AO": 302}
    assert s.total_power_mw == 2521


def test_jetpack6_orin_nano_lines() -> None:
    idle, load = (parse_line(x) for x in samples()[1:3])
    assert idle.timestamp == "11-25-2026 07:51:16"
    assert idle.gpu_load_pct == 0 and idle.gpu_freq_mhz is None
    assert idle.cpu_load_pct == [1, 2, 0, 0, None, None]
    assert idle.total_power_mw == 4451 and idle.rails_avg_mw["VDD_SOC"] == 1322
    assert idle.max_temp_c == 46.25
    assert (load.gpu_load_pct, load.gpu_freq_mhz) == (87, 624)
    assert load.rails_mw["VDD_IN"] == 9870 and load.rails_avg_mw["VDD_IN"] == 7012
    summary = summarize([idle, load])
    assert summary["power_max_mw"] == 9870 and summary["temp_max_c"] == 73.25 and summary["samples"] == 2


def test_sampler_reads_a_tegrastats_binary(tmp_path: Path) -> None:
    fake = tmp_path / "tegrastats"
    line = samples()[1]
    fake.write_text(f"#!/bin/sh\nfor i in 1 2 3; do echo '{line}'; done\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    sampler = TegrastatsSampler(interval_ms=100, exe=os.fspath(fake))
    sampler.start()
    import time

    deadline = time.monotonic() + 10
    while len(sampler.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    got = sampler.stop()
    assert len(got) == 3 and got[0].total_power_mw == 4451
