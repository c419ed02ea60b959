"""Device identity and probe: which L4T, board, GPU and TensorRT this engine is built for.

Every file read goes through ``root`` so tests run on fixtures written in the documented formats
(``/etc/nv_tegra_release``, ``/proc/device-tree/model``, ``/sys/class/thermal``). On a non-Jetson host
the Jetson fields read as absent and the identity falls back to architecture + CPU model, still stable.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.jetpack import versions
from edge_runtime.jetson import module_from_device_tree

_L4T_RE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<rev>[\d.]+)(?P<rest>.*)")


@dataclass(frozen=True)
class L4TRelease:
    """Parsed first line of /etc/nv_tegra_release, e.g. ``# R36 (release), REVISION: 4.0, ...``."""

    major: int
    revision: str
    board: str = ""

    @property
    def version(self) -> str:
        return f"{self.major}.{self.revision}"  # "36.4.0"

    @property
    def jetpack(self) -> str:
        """JetPack generation this L4T belongs to (R35 → 5, R36 → 6, from the JetPack table); a hint for
        humans, "?" for an L4T major the table does not know."""
        return versions().generation_for_l4t_major(self.major) or "?"

    @property
    def jetpack_release(self) -> str | None:
        """The exact JetPack release (36.4.0 → "6.1") where the table has this L4T release, else None."""
        row = versions().for_l4t(self.version)
        return row.jetpack if row else None

    @classmethod
    def parse(cls, text: str) -> L4TRelease | None:
        for line in text.splitlines():
            m = _L4T_RE.match(line.strip())
            if m:
                board = ""
                bm = re.search(r"BOARD:\s*([^,]+)", m.group("rest"))
                if bm:
                    board = bm.group(1).strip()
                return cls(int(m.group("major")), m.group("rev"), board)
        return None


@dataclass(frozen=True)
class ThermalZone:
    index: int
    type: str
    temp_c: float | None  # None: unreadable, or the sensor reports -256 °C (powered off)


@dataclass(frozen=True)
class DeviceIdentity:
    """What makes an engine valid on this device; part of the engine cache key."""

    arch: str
    l4t: str | None
    board: str | None
    gpu: str
    compute_capability: str | None
    cpu: str

    def key_parts(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeviceProbe:
    """Everything ``edge-runtime probe`` reports."""

    identity: DeviceIdentity
    l4t: L4TRelease | None
    model: str | None
    module: dict[str, Any] | None
    tensorrt: str | None
    cuda: str | None
    power_mode: str | None
    thermal_zones: list[ThermalZone] = field(default_factory=list)
    tegrastats: str | None = None
    # Whether CUDA (through cuda-python) reports a GPU to this process; None when a fixture root is probed.
    # On a Jetson the board names its GPU even in a container started without the NVIDIA runtime, where
    # CUDA sees none: this field, not identity.gpu, says whether TensorRT can run.
    gpu_visible: bool | None = None

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None or self.model is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_jetson": self.is_jetson,
            "identity": self.identity.key_parts(),
            "l4t": None
            if self.l4t is None
            else {
                **asdict(self.l4t),
                "version": self.l4t.version,
                "jetpack": self.l4t.jetpack,
                "jetpack_release": self.l4t.jetpack_release,
            },
            "model": self.model,
            "module": self.module,
            "tensorrt": self.tensorrt,
            "cuda": self.cuda,
            "gpu_visible": self.gpu_visible,
            "power_mode": self.power_mode,
            "thermal_zones": [asdict(z) for z in self.thermal_zones],
            "tegrastats": self.tegrastats,
        }


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def read_l4t(root: Path = Path("/")) -> L4TRelease | None:
    text = _read(root, "etc/nv_tegra_release")
    return L4TRelease.parse(text) if text else None


def read_board_model(root: Path = Path("/")) -> str | None:
    """/proc/device-tree/model is NUL-terminated."""
    text = _read(root, "proc/device-tree/model")
    if text is None:
        return None
    text = text.rstrip("\x00").strip()
    return text or None


def read_thermal_zones(root: Path = Path("/")) -> list[ThermalZone]:
    """Every /sys/class/thermal/thermal_zone*/ with its type and temperature (millidegrees in sysfs)."""
    base = root / "sys/class/thermal"
    zones: list[ThermalZone] = []
    if not base.is_dir():
        return zones
    for d in sorted(base.glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0)):
        if not d.name[12:].isdigit():
            continue
        ztype = (_read(d, "type") or d.name).strip()
        raw = (_read(d, "temp") or "").strip()
        temp: float | None
        try:
            temp = int(raw) / 1000.0
        except ValueError:
            temp = None
        if temp is not None and temp <= -255:
            temp = None
        zones.append(ThermalZone(int(d.name[12:]), ztype, temp))
    return zones


def read_power_mode(root: Path = Path("/")) -> str | None:
    """Current nvpmodel mode id, from nvpmodel's status file (``pmode:0002``) or ``nvpmodel -q``."""
    text = _read(root, "var/lib/nvpmodel/status")
    if text:
        m = re.search(r"pmode:\s*(\d+)", text)
        if m:
            return str(int(m.group(1)))
    if root == Path("/") and (exe := shutil.which("nvpmodel")):
        try:
            out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        # "NV Power Mode: MAXN\n0"
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if lines and lines[-1].isdigit():
            name = lines[0].split(":", 1)[-1].strip() if ":" in lines[0] else ""
            return f"{lines[-1]} ({name})" if name else lines[-1]
    return None


def _cpu_model(root: Path) -> str:
    text = _read(root, "proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "CPU part"):
        for line in text.splitlines():
            if line.lower().startswith(key.lower()) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:
        return None
    return str(tensorrt.__version__)


def cuda_runtime() -> Any | None:
    """cuda-python's CUDA runtime module, or None where cuda-python is absent (the one import of it).

    ``cuda.bindings.runtime`` first (cuda-python 12.6 and later, the only spelling in 13), then
    ``from cuda import cudart`` (cuda-python 12.x before the split; removed in 13).
    """
    try:
        from cuda.bindings import runtime

        return runtime
    except Exception:
        pass
    try:
        from cuda import cudart
    except Exception:
        return None
    return cudart


def cuda_gpu() -> tuple[str, str] | None:
    """(GPU name, compute capability) through cuda-python's runtime API, if it and a GPU are present."""
    cudart = cuda_runtime()
    if cudart is None:
        return None
    try:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except Exception:
        return None


def device_identity(root: Path = Path("/"), gpu: tuple[str, str] | None = None) -> DeviceIdentity:
    """Identity from files under ``root``; ``gpu`` comes from the backend where it knows one."""
    l4t = read_l4t(root)
    model = read_board_model(root)
    if gpu is None and root == Path("/"):
        gpu = cuda_gpu()
    if gpu is None and model is not None and (module := module_from_device_tree(model)):
        gpu = (module.gpu, module.compute_capability)
    return DeviceIdentity(
        arch=platform.machine() or "unknown",
        l4t=l4t.version if l4t else None,
        board=model,
        gpu=gpu[0] if gpu else "cpu",
        compute_capability=gpu[1] if gpu else None,
        cpu=_cpu_model(root),
    )


def probe(root: Path = Path("/")) -> DeviceProbe:
    root = Path(root)
    model = read_board_model(root)
    module = module_from_device_tree(model) if model else None
    live = root == Path("/")
    cuda = None
    if live and (cudart := cuda_runtime()) is not None:
        try:
            err, ver = cudart.cudaRuntimeGetVersion()
            cuda = f"{ver // 1000}.{(ver % 1000) // 10}" if int(err) == 0 else None
        except Exception:
            cuda = None
    visible = cuda_gpu() if live else None
    return DeviceProbe(
        identity=device_identity(root, gpu=visible),
        l4t=read_l4t(root),
        model=model,
        module=module.to_dict() if module else None,
        tensorrt=tensorrt_version() if live else None,
        cuda=cuda,
        power_mode=read_power_mode(root),
        thermal_zones=read_thermal_zones(root),
        tegrastats=shutil.which("tegrastats") if live else None,
        gpu_visible=(visible is not None) if live else None,
    )
