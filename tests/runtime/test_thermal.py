from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.thermal import CRITICAL, DEGRADED, NORMAL, ThermalGovernor, ThermalPolicy


def set_temp(root: Path, zone: int, kind: str, celsius: float) -> None:
    d = root / f"sys/class/thermal/thermal_zone{zone}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "type").write_text(kind + "\n")
    (d / "temp").write_text(f"{int(celsius * 1000)}\n")


def test_states_and_hysteresis_from_sysfs(tmp_path: Path) -> None:
    changes: list[tuple[str, str]] = []
    gov = ThermalGovernor(
        ThermalPolicy(soft_c=70, hard_c=85, hysteresis_c=3, degraded_max_batch=2),
        root=tmp_path,
        on_change=lambda a, b: changes.append((a, b)),
    )
    set_temp(tmp_path, 0, "cpu-thermal", 40)
    set_temp(tmp_path, 1, "gpu-thermal", 50)
    assert gov.update() == NORMAL and gov.temp_c == 50 and gov.max_batch() is None and gov.admit() is None
    set_temp(tmp_path, 1, "gpu-thermal", 72)
    assert gov.update() == DEGRADED and gov.max_batch() == 2 and gov.admit() is None
    set_temp(tmp_path, 1, "gpu-thermal", 68.5)  # inside the hysteresis band: stays degraded
    assert gov.update() == DEGRADED
    set_temp(tmp_path, 0, "cpu-thermal", 86)
    assert gov.update() == CRITICAL
    reason = gov.admit()
    assert reason is not None and "too hot" in reason and reason.endswith(".")
    set_temp(tmp_path, 0, "cpu-thermal", 75)  # below hard, above soft: still critical
    assert gov.update() == CRITICAL
    set_temp(tmp_path, 0, "cpu-thermal", 69)
    set_temp(tmp_path, 1, "gpu-thermal", 60)
    assert gov.update() == DEGRADED  # below soft, inside the band
    set_temp(tmp_path, 0, "cpu-thermal", 60)
    assert gov.update() == NORMAL
    assert changes == [(NORMAL, DEGRADED), (DEGRADED, CRITICAL), (CRITICAL, DEGRADED), (DEGRADED, NORMAL)]


def test_watched_zones_and_off_sensors(tmp_path: Path) -> None:
    set_temp(tmp_path, 0, "cv0-thermal", -256)
    set_temp(tmp_path, 1, "gpu-thermal", 90)
    set_temp(tmp_path, 2, "cpu-thermal", 50)
    assert ThermalGovernor(ThermalPolicy(zones=("cpu-thermal",)), root=tmp_path).read_max_temp() == 50
    assert ThermalGovernor(root=tmp_path).read_max_temp() == 90
    assert ThermalGovernor(root=tmp_path / "none").update() == NORMAL  # no sensors: no guess


def test_rate_cap_when_degraded() -> None:
    temps = iter([75.0])
    gov = ThermalGovernor(ThermalPolicy(soft_c=70, hard_c=85, degraded_rate_hz=2), read=lambda: next(temps))
    gov.update()
    assert gov.admit() is None
    refused = gov.admit()
    assert refused is not None and "2 requests per second" in refused


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        ThermalPolicy(soft_c=90, hard_c=80)


def test_sensor_unreadable_while_critical_keeps_refusing_with_a_sentence(tmp_path: Path) -> None:
    gov = ThermalGovernor(ThermalPolicy(soft_c=70, hard_c=85), root=tmp_path)
    set_temp(tmp_path, 0, "gpu-thermal", 90)
    assert gov.update() == CRITICAL
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").unlink()  # the sensor stops answering
    assert gov.update() == CRITICAL  # no reading: keep refusing rather than guess it cooled
    reason = gov.admit()
    assert reason is not None and "cannot be read" in reason and "90.0 °C" in reason and reason.endswith(".")
    assert gov.snapshot()["temp_c"] is None
    set_temp(tmp_path, 0, "gpu-thermal", 60)
    assert gov.update() == NORMAL and gov.admit() is None
