"""Parser and sampler for ``tegrastats``, the Jetson's RAM / CPU / GPU / temperature / power reporter.

Real line formats it reads (tests/runtime/fixtures/tegrastats_samples.txt holds samples):

* JetPack 5 (L4T R35): ``RAM 2448/30536MB (lfb 6215x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,off,...]
  EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] ... CPU@45.187C GPU@-256C ... VDD_GPU_SOC 2791mW/2791mW``
* JetPack 6 (L4T R36): a leading ``MM-DD-YYYY HH:MM:SS`` timestamp, ``GR3D_FREQ 0%`` or ``87%@[624]``,
  lower-case sensor names (``cpu@46.25C``) and rails such as ``VDD_IN 4451mW/4451mW``.

A sensor at -256 °C is powered off and left out. Rails are "current/average" mW (a third value,
the peak, appears on newer releases and is ignored).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

_DATE = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GR3D = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW(?:/\d+mW)?")


@dataclass
class TegrastatsSample:
    timestamp: str | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_load_pct: list[int | None] = field(default_factory=list)  # None: core off
    cpu_freq_mhz: list[int | None] = field(default_factory=list)
    gpu_load_pct: int | None = None
    gpu_freq_mhz: int | None = None
    emc_load_pct: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, int] = field(default_factory=dict)  # current
    rails_avg_mw: dict[str, int] = field(default_factory=dict)

    @property
    def max_temp_c(self) -> float | None:
        return max(self.temps_c.values(), default=None)

    @property
    def total_power_mw(self) -> int | None:
        """Board input power where a VDD_IN / VIN_SYS rail exists (JetPack 6 / 5), else the sum of rails."""
        for rail in ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN"):
            if rail in self.rails_mw:
                return self.rails_mw[rail]
        return sum(self.rails_mw.values()) if self.rails_mw else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_temp_c"] = self.max_temp_c
        d["total_power_mw"] = self.total_power_mw
        return d


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line; fields it does not find stay None/empty (formats differ per release)."""
    s = TegrastatsSample()
    if m := _DATE.match(line):
        s.timestamp = m.group(1)
        line = line[m.end() :]
    if m := _RAM.search(line):
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    if m := _SWAP.search(line):
        s.swap_used_mb, s.swap_total_mb = int(m.group(1)), int(m.group(2))
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            core = core.strip()
            if core == "off" or not core:
                s.cpu_load_pct.append(None)
                s.cpu_freq_mhz.append(None)
                continue
            load, _, freq = core.partition("@")
            s.cpu_load_pct.append(int(load.rstrip("%")) if load.rstrip("%").isdigit() else None)
            s.cpu_freq_mhz.append(int(freq) if freq.isdigit() else None)
    if m := _GR3D.search(line):
        s.gpu_load_pct = int(m.group(1)) if m.group(1) else None
        if m.group(2):
            s.gpu_freq_mhz = max(int(f) for f in m.group(2).split(",") if f)
    if m := _EMC.search(line):
        s.emc_load_pct = int(m.group(1))
    rest = _CPU.sub("", line)  # "729,off" inside CPU [...] must not look like sensors
    for name, value in _TEMP.findall(rest):
        t = float(value)
        if t > -256:
            s.temps_c[name.lower()] = t
    for name, cur, avg in _RAIL.findall(rest):
        s.rails_mw[name] = int(cur)
        s.rails_avg_mw[name] = int(avg)
    return s


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps the parsed samples."""

    def __init__(self, interval_ms: int = 500, exe: str | None = None) -> None:
        self.exe = exe or shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.samples: list[TegrastatsSample] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self) -> None:
        if self.exe is None:
            return
        self._proc = subprocess.Popen(
            [self.exe, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.samples.append(parse_line(line))

    def wait_for(self, count: int = 1, timeout_s: float | None = None) -> bool:
        """Wait until ``count`` samples arrived (a short run still gets a power reading); False on timeout."""
        if self._proc is None:
            return False
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3 * self.interval_ms / 1000)
        while len(self.samples) < count and time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(0.01)
        return len(self.samples) >= count

    def stop(self) -> list[TegrastatsSample]:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.samples


def summarize(samples: list[TegrastatsSample]) -> dict[str, Any]:
    """Mean and max of power and temperature over a profiling run."""
    if not samples:
        return {}
    power = [p for s in samples if (p := s.total_power_mw) is not None]
    temps = [t for s in samples if (t := s.max_temp_c) is not None]
    gpu = [g for s in samples if (g := s.gpu_load_pct) is not None]
    ram = [r for s in samples if (r := s.ram_used_mb) is not None]
    out: dict[str, Any] = {"samples": len(samples)}
    if power:
        out.update(power_mean_mw=sum(power) / len(power), power_max_mw=max(power))
    if temps:
        out.update(temp_max_c=max(temps))
    if gpu:
        out.update(gpu_load_mean_pct=sum(gpu) / len(gpu))
    if ram:
        out.update(ram_used_max_mb=max(ram))
    return out
