"""The Jetson module table, as data: defaults such as the TensorRT workspace derive from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edge_runtime.errors import EdgeError

GIB = 1 << 30


@dataclass(frozen=True)
class JetsonModule:
    key: str
    name: str
    gpu: str
    cuda_cores: int
    memory_gb: tuple[int, ...]
    tops: tuple[int, int]
    power_w: tuple[int, int]
    compute_capability: str
    # Substrings of /proc/device-tree/model that identify the module.
    model_markers: tuple[str, ...]

    @property
    def default_workspace_bytes(self) -> int:
        """TensorRT workspace: 1 GiB, the documented default, except where memory is larger."""
        return 2 * GIB if min(self.memory_gb) >= 32 else GIB

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["default_workspace_bytes"] = self.default_workspace_bytes
        return d


JETSON_MODULES: dict[str, JetsonModule] = {
    m.key: m
    for m in (
        JetsonModule(
            "orin_nano",
            "Jetson Orin Nano 8GB",
            "1024-core Ampere",
            1024,
            (8,),
            (40, 40),
            (7, 15),
            "8.7",
            ("Orin Nano",),
        ),
        JetsonModule(
            "orin_nx",
            "Jetson Orin NX 16GB",
            "1024-core Ampere",
            1024,
            (16,),
            (70, 70),
            (10, 25),
            "8.7",
            ("Orin NX",),
        ),
        JetsonModule(
            "agx_orin",
            "Jetson AGX Orin 32/64GB",
            "2048-core Ampere",
            2048,
            (32, 64),
            (200, 275),
            (15, 60),
            "8.7",
            ("AGX Orin",),
        ),
        JetsonModule(
            "xavier_nx",
            "Jetson Xavier NX",
            "384-core Volta",
            384,
            (8, 16),
            (21, 21),
            (10, 20),
            "7.2",
            ("Xavier NX",),
        ),
        JetsonModule(
            "agx_xavier",
            "Jetson AGX Xavier",
            "512-core Volta",
            512,
            (32, 64),
            (32, 32),
            (10, 30),
            "7.2",
            ("AGX Xavier",),
        ),
    )
}


def jetson_module(key: str) -> JetsonModule:
    """Look up a module by its key (``orin_nano`` …); unknown keys name the choices."""
    try:
        return JETSON_MODULES[key]
    except KeyError:
        choices = ", ".join(JETSON_MODULES)
        raise EdgeError(f"Unknown Jetson model {key!r}; choose one of: {choices}.") from None


def module_from_device_tree(model: str) -> JetsonModule | None:
    """Map the text of /proc/device-tree/model (e.g. 'NVIDIA Jetson Orin Nano Developer Kit') to a module."""
    for module in JETSON_MODULES.values():
        if any(marker.lower() in model.lower() for marker in module.model_markers):
            return module
    return None
