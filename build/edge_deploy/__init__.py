"""Host side of edge-deploy: PyTorch → ONNX → model bundle → images → releases → robots.

``JetsonDeployment`` and the module-level functions are the documented Python API; they import torch
and friends lazily, so ``import edge_deploy`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "JetsonDeployment": "edge_deploy.api",
    "export_to_onnx": "edge_deploy.api",
    "convert_to_tensorrt": "edge_deploy.api",
    "quantize_model": "edge_deploy.api",
    "profile_performance": "edge_deploy.api",
    "deploy_to_device": "edge_deploy.api",
}

if TYPE_CHECKING:
    from edge_deploy.api import (
        JetsonDeployment,
        convert_to_tensorrt,
        deploy_to_device,
        export_to_onnx,
        profile_performance,
        quantize_model,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edge_deploy' has no attribute {name!r}")


__all__ = [
    "JetsonDeployment",
    "__version__",
    "convert_to_tensorrt",
    "deploy_to_device",
    "export_to_onnx",
    "profile_performance",
    "quantize_model",
]
