"""Host-side user errors; each is one sentence, printed by the CLI runner as ``error: …``."""

from __future__ import annotations

from edge_runtime.errors import EdgeError, InputError


class ModelLoadError(EdgeError):
    """The model file is missing, unreadable, or not a model the pipeline accepts."""


class ExportError(EdgeError):
    """``torch.onnx.export`` could not turn the model into ONNX."""


class ValidationError(EdgeError):
    """ONNX Runtime's outputs differ from PyTorch's (or fp32's) by more than the tolerance."""


class CalibrationError(EdgeError):
    """Calibration data is missing, unreadable, or does not match the model's inputs."""


class QuantizationError(EdgeError):
    """fp16 conversion or int8 calibration/quantization failed inside ONNX Runtime's tools."""


class OutputError(EdgeError):
    """The output location cannot be written."""


class PipelineOptionError(EdgeError):
    """An option value is not one the pipeline supports (precision, opset, input override)."""


__all__ = [
    "CalibrationError",
    "EdgeError",
    "ExportError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "PipelineOptionError",
    "QuantizationError",
    "ValidationError",
]
