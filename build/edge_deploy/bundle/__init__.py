"""The model bundle as the host writes it: ``model.onnx`` (+ fp16/int8 variants), ``bundle.json`` and the
calibration cache, in the layout ``edge_runtime.bundle`` loads on the robot."""

from __future__ import annotations

from edge_deploy.bundle.writer import BundleWriter, check_writable

__all__ = ["BundleWriter", "check_writable"]
