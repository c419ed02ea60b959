"""ThermalGovernor: keep serving while the module is hot, and stop before the hardware throttles hard.

States: ``normal`` → above the soft limit ``degraded`` (smaller batches, a request-rate cap, and/or a
callback that asks for a lower nvpmodel mode) → above the hard limit ``critical`` (new work refused with
503) until the temperature is back below the soft limit (hysteresis, so it does not flap at the line).
Temperatures come from sysfs thermal zones under a configurable root, so tests use fake readings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.device import read_thermal_zones

log = logging.getLogger(__name__)

NORMAL, DEGRADED, CRITICAL = "normal", "degraded", "critical"
STATE_CODES = {NORMAL: 0, DEGRADED: 1, CRITICAL: 2}


@dataclass(frozen=True)
class ThermalPolicy:
    soft_c: float = 80.0
    hard_c: float = 95.0
    hysteresis_c: float = 3.0  # degraded → normal only below soft - hysteresis
    degraded_max_batch: int | None = 1  # split larger requests into chunks of this size
    degraded_rate_hz: float | None = None  # cap on accepted requests per second while degraded
    zones: tuple[str, ...] = ()  # zone types to watch (e.g. "cpu-thermal", "gpu-thermal"); empty = all

    def __post_init__(self) -> None:
        if not self.soft_c < self.hard_c:
            raise ValueError(f"soft limit {self.soft_c} °C must be below hard limit {self.hard_c} °C")


class ThermalGovernor:
    def __init__(
        self,
        policy: ThermalPolicy | None = None,
        root: str | Path = "/",
        on_change: Callable[[str, str], None] | None = None,
        read: Callable[[], float | None] | None = None,
    ) -> None:
        self.policy = policy or ThermalPolicy()
        self.root = Path(root)
        self.on_change = on_change  # (old, new): e.g. ask nvpmodel for a lower mode when degraded
        self._read = read or self.read_max_temp
        self._lock = threading.Lock()
        self.state = NORMAL
        self.temp_c: float | None = None  # the latest reading; None while the sensors cannot be read
        self.last_temp_c: float | None = None  # the latest reading there was, shown while they cannot
        self._last_admit = 0.0

    def read_max_temp(self) -> float | None:
        zones = read_thermal_zones(self.root)
        wanted: Sequence[str] = self.policy.zones
        temps = [z.temp_c for z in zones if z.temp_c is not None and (not wanted or z.type in wanted)]
        return max(temps, default=None)

    def update(self) -> str:
        """Read the sensors and move between states; returns the new state."""
        temp = self._read()
        p = self.policy
        with self._lock:
            old = self.state
            self.temp_c = temp
            if temp is not None:
                self.last_temp_c = temp
            if temp is None:
                new = old  # no reading: keep the last decision rather than guess
            elif temp >= p.hard_c:
                new = CRITICAL
            elif old == CRITICAL:
                new = (
                    CRITICAL
                    if temp >= p.soft_c
                    else DEGRADED
                    if temp >= p.soft_c - p.hysteresis_c
                    else NORMAL
                )
            elif temp >= p.soft_c or (old == DEGRADED and temp >= p.soft_c - p.hysteresis_c):
                new = DEGRADED
            else:
                new = NORMAL
            self.state = new
        if new != old:
            log.warning(
                "thermal state %s → %s at %.1f °C (soft %.0f, hard %.0f)",
                old,
                new,
                temp or 0.0,
                p.soft_c,
                p.hard_c,
            )
            if self.on_change is not None:
                try:
                    self.on_change(old, new)
                except Exception:
                    log.exception("thermal on_change callback failed")
        return new

    def max_batch(self) -> int | None:
        """Largest batch to run at once now; None means the engine's own limit."""
        return self.policy.degraded_max_batch if self.state == DEGRADED else None

    def admit(self) -> str | None:
        """None if a request may run now, else a one-sentence reason to refuse it."""
        with self._lock:
            state = self.state
            if state == CRITICAL:
                if self.temp_c is None:  # hot at the last reading and the sensor is silent now: keep refusing
                    last = "" if self.last_temp_c is None else f" (last reading {self.last_temp_c:.1f} °C)"
                    return (
                        f"The device reached its {self.policy.hard_c:.0f} °C limit{last} and its temperature "
                        "sensor cannot be read now; inference is paused until a reading shows it cooled."
                    )
                return (
                    f"The device is too hot ({self.temp_c:.1f} °C ≥ {self.policy.hard_c:.0f} °C); "
                    "inference is paused until it cools."
                )
            rate = self.policy.degraded_rate_hz
            if state == DEGRADED and rate:
                now = time.monotonic()
                if now - self._last_admit < 1.0 / rate:
                    return f"The device is hot and limited to {rate:g} requests per second; retry shortly."
                self._last_admit = now
        return None

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "temp_c": self.temp_c,
            "soft_c": self.policy.soft_c,
            "hard_c": self.policy.hard_c,
        }
