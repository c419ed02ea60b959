"""Device side of edge-deploy: engine cache, backends and the inference service that run on the robot."""

from __future__ import annotations

__version__ = "0.1.0"
